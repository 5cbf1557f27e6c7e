"""A small framework for OCF resource agents written in Python (OCF 1.1, as Pacemaker runs them).

An agent declares its parameters and actions; the framework reads OCF_RESKEY_*, types and checks the parameters,
dispatches the action under a hard deadline below OCF_RESKEY_CRM_meta_timeout, maps outcomes to OCF exit codes,
reports the reason to Pacemaker (`ocf-exit-reason:` on stderr) and logs like ocf_log. Metadata is generated with
lxml, valid against both the OCF 1.0 DTD that ocf-tester checks and the OCF 1.1 RelaxNG that pcs ships; lxml is
imported only for meta-data, so monitor stays lean.

    agent = ocf.Agent("example", shortdesc="...", longdesc="...", parameters=[ocf.Parameter("state", ...)])

    @agent.action("monitor", timeout=20, interval=10)
    def monitor(ctx):
        return ocf.Rc.SUCCESS if running(ctx.params["state"]) else ocf.Rc.NOT_RUNNING

    if __name__ == "__main__":
        agent.main()
"""
from __future__ import annotations

import enum
import os
import signal
import sys

from crashup_lib import __version__, deadline, log
from crashup_lib.words import FALSE_WORDS, TRUE_WORDS

# No dataclasses, typing or configparser here: every import is paid by each monitor on every node.


class Rc(enum.IntEnum):
    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7
    RUNNING_PROMOTED = 8
    FAILED_PROMOTED = 9


#: what configuration problems end in: nothing this configuration describes can be running
CONFIGURATION_RCS = (Rc.ERR_ARGS, Rc.ERR_CONFIGURED, Rc.ERR_INSTALLED)


class OcfError(Exception):
    """End the action with `rc`; `reason` becomes the exit reason Pacemaker shows (crm_mon, pcs status)."""

    def __init__(self, rc: Rc, reason: str):
        super().__init__(reason)
        self.rc = Rc(rc)
        self.reason = reason


PARAMETER_TYPES = ("string", "integer", "boolean")


class Parameter:
    def __init__(self, name: str, shortdesc: str, longdesc: str = "", *, type: str = "string",
                 required: bool = False, default: str | None = None, unique: bool = False,
                 choices: tuple[str, ...] = (), check=None):
        self.name = name
        self.shortdesc = shortdesc
        self.longdesc = longdesc
        self.type = type                     # string | integer | boolean (the types both schemas accept)
        self.required = required
        self.default = default
        self.unique = unique
        self.choices = choices               # listed in longdesc: the 1.0 DTD has no select type
        self.check = check                   # value -> None, or ValueError("why"): checked with the parameters

    def parse(self, raw: str):
        problem = log.text_problem(raw)      # a newline or an undecodable byte is never meant in a parameter
        if problem:
            raise ValueError("expected " + problem)
        value = self._typed(raw)
        if self.check and value not in ("", None):
            self.check(value)
        return value

    def _typed(self, raw: str):
        if self.type == "integer":
            try:
                return int(raw.strip())
            except ValueError:
                raise ValueError("expected an integer") from None
        if self.type == "boolean":           # ocf_is_true's words
            word = raw.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS or word == "":
                return False
            raise ValueError("expected a boolean (yes/no, true/false, 1/0)")
        if self.choices and raw not in self.choices:
            raise ValueError("expected one of " + ", ".join(c or "'' (empty)" for c in self.choices))
        return raw


def directory(value: str) -> None:
    """A Parameter check: an absolute path that is a directory, or nothing yet (created on start)."""
    if not value.startswith("/"):
        raise ValueError("expected an absolute path")
    if os.path.lexists(value) and not os.path.isdir(value):
        raise ValueError("expected a directory (it is a file)")


class Action:
    def __init__(self, name: str, timeout: int, handler=None, interval: int | None = None,
                 depth: int | None = None, role: str | None = None):
        self.name = name
        self.timeout = timeout               # seconds: the default Pacemaker shows and the deadline off-cluster
        self.handler = handler
        self.interval = interval
        self.depth = depth
        self.role = role


# actions the OCF 1.0 DTD admits (ocf-tester validates against it); custom names would fail validation
DTD_ACTIONS = ("start", "stop", "recover", "monitor", "restart", "migrate_to", "migrate_from", "promote", "demote",
               "notify", "status", "reload", "meta-data", "usage", "methods", "validate-all")
BUILTIN_ACTIONS = ("meta-data", "validate-all", "usage", "help", "methods")


class Context:
    """What an action sees: typed parameters, the resource's identity and meta attributes, a logger, time left."""

    def __init__(self, agent: "Agent", action: str, params: dict, log, env: dict[str, str]):
        self.agent = agent
        self.action = action
        self.params = params
        self.log = log
        self.env = env

    @property
    def instance(self) -> str:
        return self.env.get("OCF_RESOURCE_INSTANCE", self.agent.name)

    def meta(self, name: str, default: str | None = None) -> str | None:
        """A meta attribute Pacemaker passes, e.g. meta('interval'), meta('on_node'), meta('notify_type')."""
        return self.env.get("OCF_RESKEY_CRM_meta_" + name, default)

    @property
    def interval_ms(self) -> int:
        try:
            return int(self.meta("interval", "0") or 0)
        except ValueError:
            return 0

    @property
    def is_probe(self) -> bool:
        """A one-shot monitor (interval 0): Pacemaker asking what is there, not watching it."""
        return self.action == "monitor" and self.interval_ms == 0

    def remaining(self) -> float:
        return deadline.remaining(default=float(self.agent.actions[self.action].timeout)) or 0.0


class Agent:
    def __init__(self, name: str, *, shortdesc: str, longdesc: str, parameters: list[Parameter] | tuple = (),
                 version: str = __version__):
        self.name = name
        self.shortdesc = shortdesc
        self.longdesc = longdesc
        self.version = version
        self.parameters = {p.name: p for p in parameters}
        self.actions: dict[str, Action] = {}
        self._validator = None
        for p in parameters:
            if p.type not in PARAMETER_TYPES:
                raise ValueError(f"parameter {p.name}: type {p.type!r} not in {PARAMETER_TYPES}")
        self.actions["meta-data"] = Action("meta-data", 5)
        self.actions["validate-all"] = Action("validate-all", 20)

    # --- declaration -------------------------------------------------------------------------------------------
    def action(self, name: str, *, timeout: int, interval: int | None = None, depth: int | None = None,
               role: str | None = None):
        if name not in DTD_ACTIONS or name in BUILTIN_ACTIONS:
            raise ValueError(f"action {name!r} is not an OCF action an agent may define")

        def register(fn):
            self.actions[name] = Action(name, timeout, fn, interval, depth, role)
            return fn
        return register

    def validator(self, fn):
        """Extra checks (binaries installed, values consistent) for validate-all and start; raise OcfError."""
        self._validator = fn
        return fn

    # --- metadata ----------------------------------------------------------------------------------------------
    def metadata(self) -> bytes:
        from lxml import etree                   # only here: monitor must not pay for it

        root = etree.Element("resource-agent", name=self.name, version=self.version)
        etree.SubElement(root, "version").text = "1.1"
        etree.SubElement(root, "longdesc", lang="en").text = self.longdesc
        etree.SubElement(root, "shortdesc", lang="en").text = self.shortdesc
        params = etree.SubElement(root, "parameters")
        for p in self.parameters.values():
            el = etree.SubElement(params, "parameter", name=p.name, required="1" if p.required else "0",
                                  unique="1" if p.unique else "0")
            longdesc = p.longdesc or p.shortdesc
            if p.choices:
                longdesc += " Allowed values: " + ", ".join(p.choices) + "."
            etree.SubElement(el, "longdesc", lang="en").text = longdesc
            etree.SubElement(el, "shortdesc", lang="en").text = p.shortdesc
            content = etree.SubElement(el, "content", type=p.type)
            if p.default is not None:
                content.set("default", p.default)
        actions = etree.SubElement(root, "actions")
        for a in sorted(self.actions.values(), key=lambda a: DTD_ACTIONS.index(a.name)):
            el = etree.SubElement(actions, "action", name=a.name, timeout=f"{a.timeout}s")
            if a.interval is not None:
                el.set("interval", f"{a.interval}s")
            if a.depth is not None:
                el.set("depth", str(a.depth))
            if a.role:
                el.set("role", a.role)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True,
                              doctype='<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">')

    def usage(self) -> str:
        names = sorted(set(self.actions) | {"usage"})
        return f"usage: {self.name} {{{'|'.join(names)}}}"

    # --- running -----------------------------------------------------------------------------------------------
    def _read_params(self, env: dict[str, str]) -> tuple[dict, list[str]]:
        params: dict = {}
        problems: list[str] = []
        for p in self.parameters.values():
            raw = env.get("OCF_RESKEY_" + p.name)
            if raw is None or (raw == "" and p.required):
                if p.required:
                    problems.append(f"required parameter {p.name} is not set")
                    continue
                if p.default is None:
                    params[p.name] = None
                    continue
                raw = p.default
            try:
                params[p.name] = p.parse(raw)
            except ValueError as e:
                problems.append(f"parameter {p.name}={log.shown(raw)} is not allowed: {e}")
        return params, problems

    def _budget(self, action: str, env: dict[str, str]) -> float:
        """The hard deadline: Pacemaker's timeout for this operation minus a margin to report and exit cleanly."""
        timeout = float(self.actions[action].timeout)
        raw = env.get("OCF_RESKEY_CRM_meta_timeout")
        if raw:
            try:
                timeout = int(raw) / 1000.0
            except ValueError:
                pass
        return max(0.5, timeout - min(2.0, timeout * 0.1))

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        env = dict(os.environ if env is None else env)
        logger = log.setup(self.name, instance=env.get("OCF_RESOURCE_INSTANCE"))
        if len(argv) != 1:
            print(self.usage(), file=sys.stderr)
            return Rc.ERR_ARGS
        action = argv[0]
        if action == "meta-data":
            sys.stdout.buffer.write(self.metadata())
            return Rc.SUCCESS
        if action in ("usage", "help"):
            print(self.usage())
            return Rc.SUCCESS
        if action == "methods":
            print("\n".join(sorted(self.actions)))
            return Rc.SUCCESS
        if action not in self.actions:
            return _exit(logger, Rc.ERR_UNIMPLEMENTED, f"action {action!r} is not implemented by {self.name}")

        params, problems = self._read_params(env)
        ctx = Context(self, action, params, logger, env)
        if problems:
            reason = "; ".join(problems)
            if action == "stop" or ctx.is_probe:
                return _not_running(logger, ctx, reason)
            return _exit(logger, Rc.ERR_CONFIGURED, reason)

        previous_term = signal.signal(signal.SIGTERM, _terminated)
        try:
            with deadline.deadline(self._budget(action, env), f"{self.name} {action}"):
                if action in ("validate-all", "start") and self._validator:
                    self._validator(ctx)
                handler = self.actions[action].handler
                rc = handler(ctx) if handler else Rc.SUCCESS
            return Rc.SUCCESS if rc is None else Rc(rc)
        except OcfError as e:
            if e.rc in CONFIGURATION_RCS and (action == "stop" or ctx.is_probe):
                return _not_running(logger, ctx, e.reason)
            return _exit(logger, e.rc, e.reason)
        except deadline.DeadlineExceeded as e:
            return _exit(logger, Rc.ERR_GENERIC, f"{e} (Pacemaker's timeout for this operation is near)")
        except _Terminated:
            return _exit(logger, Rc.ERR_GENERIC, f"{action} interrupted by SIGTERM")
        except Exception as e:               # never a traceback to Pacemaker: one line, the details in debug
            logger.debug("%s failed", action, exc_info=True)
            return _exit(logger, Rc.ERR_GENERIC, f"{action} failed: {type(e).__name__}: {e}")
        finally:
            signal.signal(signal.SIGTERM, previous_term)

    def main(self, argv: list[str] | None = None) -> None:
        sys.exit(int(self.run(sys.argv[1:] if argv is None else argv)))


class _Terminated(BaseException):
    pass


def _terminated(signum, frame):
    raise _Terminated()


def _not_running(logger, ctx: Context, reason: str) -> int:
    """A configuration problem (a parameter, crashup.conf, a command not installed) on a stop or a probe. An agent
    that cannot read its configuration cannot have started this resource: a probe finds it not running and a stop
    succeeds (a failed stop would make Pacemaker fence the node for a typo)."""
    if ctx.action == "stop":
        logger.warning("stop: %s; nothing this configuration could have started", log.redact(reason))
        return Rc.SUCCESS
    logger.warning("probe: %s; reporting not running", log.redact(reason))
    return Rc.NOT_RUNNING


def _exit(logger, rc: Rc, reason: str) -> int:
    reason = log.one_line(log.redact(reason))    # Pacemaker reads the reason up to the end of the line
    logger.error("%s", reason)
    print(f"ocf-exit-reason:{reason}", file=sys.stderr)
    return int(rc)
