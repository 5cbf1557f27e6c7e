"""A framework for fence agents that follows the fence-agents contract exactly (see fence-agents' fencing.py).

Input: options as `key=value` lines on stdin when there are no arguments (how Pacemaker's fencer calls), else the
command line; `#` lines skipped, quotes stripped, `-`/`_` interchangeable, old names (ipaddr, login, passwd, port)
accepted, unknown keys warned about and ignored, `nodename`/`nodeid` taken silently. Actions: on, off, reboot
(default), status, monitor, list, list-status, metadata, validate-all. Exit codes: 0 success; status 0 ON, 2 OFF;
every failure 1 with one "Failed: ..." line on stderr (Pacemaker classes "Timed out" as a timeout).

Unlike fencing.py, timeouts always hold (fencing.py drops them all under Pacemaker), every action runs under a hard
deadline, and a password is never needed on the command line: stdin, a file or a script supply it, and it is
redacted from every log line and message.

An agent subclasses FenceAgent. A power agent implements get_power/set_power and inherits the generic on/off/reboot
semantics (read state first, act, confirm by reading back); an agent whose "off" is not a power change (e.g. marking
a nova service down) overrides the actions it needs.
"""
from __future__ import annotations

import dataclasses
import getopt
import logging
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from crashup_lib import __version__, deadline, log
from crashup_lib.words import FALSE_WORDS, TRUE_WORDS

EC_OK, EC_FAILED, EC_STATUS_OFF = 0, 1, 2
ACTIONS = ("on", "off", "reboot", "status", "monitor", "list", "list-status", "metadata", "validate-all")
IGNORED_SILENTLY = ("nodename", "nodeid")      # Pacemaker sends these to every agent
DEVICE_ACTIONS = ("monitor", "list", "list-status", "validate-all")   # about the device, not one node


class FenceError(Exception):
    """Ends the action with exit 1 and the line 'Failed: <message>'."""


class FenceTimeout(FenceError):
    """A failure Pacemaker must class as a timeout: the message starts 'Timed out'."""


@dataclasses.dataclass(frozen=True)
class Option:
    name: str                                  # the metadata and stdin name
    shortdesc: str
    type: str = "string"                       # string | boolean | integer | second | select
    default: str | None = None
    required: bool = False
    short: str | None = None                   # getopt letter
    metavar: str = "value"
    choices: tuple[str, ...] = ()
    obsoletes: str | None = None               # the old name, still accepted, listed as deprecated
    secret: bool = False

    @property
    def longopt(self) -> str:
        return self.name.replace("_", "-")

    @property
    def getopt_mixed(self) -> str:
        arg = "" if self.type == "boolean" else f"=[{self.metavar}]"
        return (f"-{self.short}, " if self.short else "") + f"--{self.longopt}{arg}"

    def parse(self, raw: str) -> Any:
        if self.type == "boolean":
            word = raw.strip().lower()
            if word in TRUE_WORDS or word == "":
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError("a boolean (1/0, yes/no, on/off, true/false)")
        if self.type in ("integer", "second"):
            try:
                value = float(raw) if self.type == "second" else int(raw)
            except ValueError:
                raise ValueError("a number of seconds" if self.type == "second" else "an integer") from None
            if value < 0:
                raise ValueError("not negative")
            return value
        if self.type == "select" and raw not in self.choices:
            raise ValueError("one of " + ", ".join(self.choices))
        return raw


# Options every crashup fence agent has.
COMMON_OPTIONS = (
    Option("action", "Fencing action", default="reboot", short="o", metavar="action"),
    Option("plug", "Name of the node to fence, as Pacemaker names it", short="n", metavar="id", obsoletes="port"),
    Option("delay", "Wait X seconds before fencing is started", type="second", default="0", metavar="seconds"),
    Option("power_timeout", "Test X seconds for status change after ON/OFF", type="second", default="20",
           metavar="seconds"),
    Option("power_wait", "Wait X seconds after issuing ON/OFF", type="second", default="0", metavar="seconds"),
    Option("login_timeout", "Wait X seconds for the device to answer a login or a request", type="second",
           default="5", metavar="seconds"),
    Option("deadline", "Hard limit on one action, in seconds; keep it below Pacemaker's action timeout "
           "(pcmk_off_timeout, default stonith-timeout 60s)", type="second", default="50", metavar="seconds"),
    Option("verbose", "Verbose mode", type="boolean", short="v"),
    Option("quiet", "Disable logging to stderr. Does not affect --verbose or --debug-file or logging to syslog.",
           type="boolean", short="q"),
)

# Options of agents that log in to a device with a user and password.
CREDENTIAL_OPTIONS = (
    Option("ip", "IP address or hostname of fencing device", short="a", metavar="ip", obsoletes="ipaddr"),
    Option("username", "Login name", short="l", metavar="name", obsoletes="login"),
    Option("password", "Login password or passphrase (prefer password_file or password_script: stdin and "
           "files do not show on a command line)", short="p", metavar="password", obsoletes="passwd",
           secret=True),
    Option("password_file", "File whose first line is the login password", metavar="path"),
    Option("password_script", "Script whose output is the login password (run without a shell)", short="S",
           metavar="script", obsoletes="passwd_script"),
)


@dataclasses.dataclass
class Request:
    """One invocation: the typed options, the target node, where the input came from."""
    action: str
    options: dict[str, Any]
    nodename: str | None
    from_stdin: bool
    log: Any
    _password: str | None = None

    def get(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value

    @property
    def plug(self) -> str | None:
        """The target as Pacemaker names it: plug/port when given, else nodename."""
        return self.options.get("plug") or self.nodename

    @property
    def password(self) -> str | None:
        """Resolved once, on first use: password, else password_file, else password_script."""
        if self._password is None:
            self._password = _resolve_password(self)
        return self._password


def _resolve_password(req: Request) -> str | None:
    if req.options.get("password"):
        return req.options["password"]
    path = req.options.get("password_file")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.readline().rstrip("\r\n")
        except OSError as e:
            raise FenceError(f"cannot read password_file {path}: {e.strerror}") from None
        log.register_secret(value)
        return value
    script = req.options.get("password_script")
    if script:
        try:
            argv = shlex.split(script)
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=min(10.0, deadline.remaining(10.0) or 10.0))
        except (OSError, ValueError) as e:
            raise FenceError(f"cannot run password_script: {getattr(e, 'strerror', None) or e}") from None
        except subprocess.TimeoutExpired:
            raise FenceTimeout("Timed out running password_script") from None
        value = done.stdout.splitlines()[0].rstrip() if done.stdout else ""
        log.register_secret(value)
        if done.returncode != 0:
            raise FenceError(f"password_script exited with status {done.returncode}")
        return value
    return None


class FenceAgent:
    name = "fence_crashup"
    shortdesc = ""
    longdesc = ""
    vendor_url = "https://github.com/crashup"
    options: tuple[Option, ...] = COMMON_OPTIONS
    #: options that must be set for a power action (validate-all checks them too)
    required_for_actions: tuple[str, ...] = ()
    #: poll interval while waiting for a power state change
    poll_interval = 0.25

    def __init__(self):
        self.by_name: dict[str, Option] = {}
        self.by_input_name: dict[str, Option] = {}
        for o in self.options:
            self.by_name[o.name] = o
            self.by_input_name[o.name] = o
            if o.obsoletes:
                self.by_input_name[o.obsoletes] = o
        self.log = None

    # --- what an agent implements ------------------------------------------------------------------------------
    def get_power(self, req: Request) -> str:
        """'on' or 'off' as the device reports it; raise FenceError when it cannot tell."""
        raise NotImplementedError

    def set_power(self, req: Request, state: str) -> None:
        """Ask the device for `state` ('on'/'off'). Return at once: the framework confirms by polling get_power."""
        raise NotImplementedError

    def list_plugs(self, req: Request) -> list[tuple[str, str]]:
        """(plug, alias) pairs for `list`. Agents without a plug list leave this out (then `list` prints N/A)."""
        raise NotImplementedError

    def validate(self, req: Request) -> None:
        """Extra checks for validate-all and every device action; raise FenceError."""

    def close(self, req: Request) -> None:
        """Release device sessions; called after every action, also after a failure or a timeout."""

    # --- the generic power semantics (fencing.py's fence_action) ----------------------------------------------
    def status(self, req: Request) -> int:
        state = self._read_state(req)
        print(f"Status: {state.upper()}")
        return EC_STATUS_OFF if state == "off" else EC_OK

    def monitor(self, req: Request) -> int:
        self._read_state(req)
        return EC_OK

    def on(self, req: Request) -> int:
        if self._read_state(req) == "on":
            print("Success: Already ON")
            return EC_OK
        self._change_power(req, "on")
        print("Success: Powered ON")
        return EC_OK

    def off(self, req: Request) -> int:
        if self._read_state(req) == "off":
            print("Success: Already OFF")
            return EC_OK
        self._change_power(req, "off")
        print("Success: Powered OFF")
        return EC_OK

    def reboot(self, req: Request) -> int:
        """Off, confirmed off, then on: never a device reset or cycle, which pyghmi-style clients may resend and a
        device carry out twice. Once OFF is confirmed the node is fenced; a failed ON only warns (as fencing.py)."""
        if self._read_state(req) != "off":
            self._change_power(req, "off")
        try:
            self._change_power(req, "on")
        except FenceError as e:
            req.log.warning("node is fenced (OFF confirmed) but powering it back ON failed: %s", e)
        print("Success: Rebooted")
        return EC_OK

    def list(self, req: Request) -> int:
        return self._print_plugs(req, with_status=False)

    def list_status(self, req: Request) -> int:
        return self._print_plugs(req, with_status=True)

    def _print_plugs(self, req: Request, with_status: bool) -> int:
        try:
            plugs = self.list_plugs(req)
        except NotImplementedError:
            print("N/A")
            return EC_OK
        for plug, alias in plugs:
            print(f"{plug},{alias},UNKNOWN" if with_status else f"{plug},{alias}")
        return EC_OK

    def _read_state(self, req: Request) -> str:
        state = self.get_power(req)
        if state not in ("on", "off"):
            raise FenceError("Unable to obtain correct plug status or plug is not available")
        return state

    def _change_power(self, req: Request, target: str) -> None:
        self.set_power(req, target)
        wait = req.get("power_wait", 0.0)
        if wait:
            time.sleep(wait)
        limit = time.monotonic() + req.get("power_timeout", 20.0)
        while True:
            if self._read_state(req) == target:
                return
            if time.monotonic() >= limit:
                raise FenceTimeout(f"Timed out waiting to power {target.upper()}")
            time.sleep(self.poll_interval)

    # --- metadata ----------------------------------------------------------------------------------------------
    def supported_actions(self) -> list[str]:
        actions = ["on", "off", "reboot", "status", "monitor"]
        if type(self).list_plugs is not FenceAgent.list_plugs:
            actions += ["list", "list-status"]
        return actions + ["metadata", "validate-all"]

    def metadata(self) -> bytes:
        from lxml import etree                  # only here: status/off must not pay for it

        root = etree.Element("resource-agent", name=self.name, shortdesc=self.shortdesc)
        etree.SubElement(root, "longdesc").text = self.longdesc
        etree.SubElement(root, "vendor-url").text = self.vendor_url
        params = etree.SubElement(root, "parameters")
        entries = []
        for o in self.options:
            entries.append((o.name, o, False))
            if o.obsoletes:
                entries.append((o.obsoletes, o, True))
        for name, o, deprecated in sorted(entries, key=lambda e: e[0]):
            attrs = {"name": name, "unique": "0", "required": "1" if o.required and not deprecated else "0"}
            if deprecated:
                attrs["deprecated"] = "1"
            elif o.obsoletes:
                attrs["obsoletes"] = o.obsoletes
            el = etree.SubElement(params, "parameter", attrs)
            etree.SubElement(el, "getopt", mixed=o.getopt_mixed)
            content = etree.SubElement(el, "content", type=o.type)
            for value in o.choices:
                etree.SubElement(content, "option", value=value)
            if o.default is not None:
                content.set("default", o.default)
            etree.SubElement(el, "shortdesc", lang="en").text = o.shortdesc
        actions = etree.SubElement(root, "actions")
        for a in self.supported_actions():
            attrs = {"name": a}
            if a == "on":
                attrs["automatic"] = "0"       # Pacemaker must not unfence with it on its own
            etree.SubElement(actions, "action", attrs)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)

    # --- input -------------------------------------------------------------------------------------------------
    def parse_stdin(self, lines: list[str], warn) -> tuple[dict[str, str], str | None]:
        raw: dict[str, str] = {}
        nodename = None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition("=")
            name = name.strip().replace("-", "_")
            value = re.sub(r'^"(.*)"$', r"\1", value.strip())
            option = self.by_input_name.get(name)
            if option is None:
                if name == "nodename":
                    nodename = value
                elif name not in IGNORED_SILENTLY:
                    shown = ascii(name)[1:-1]                  # garbage input stays one printable line
                    warn(f"Parse error: Ignoring unknown option '{shown[:60]}'")
                continue
            if option.secret:
                log.register_secret(value)
            raw[option.name] = value
        return raw, nodename

    def parse_argv(self, argv: list[str], warn) -> dict[str, str]:
        shorts = "".join(o.short + ("" if o.type == "boolean" else ":") for o in self.options if o.short)
        longs = [o.longopt + ("" if o.type == "boolean" else "=") for o in self.options]
        longs += [o.obsoletes.replace("_", "-") + ("" if o.type == "boolean" else "=")
                  for o in self.options if o.obsoletes]
        longs += ["help", "version"]
        try:
            pairs, rest = getopt.gnu_getopt(argv, shorts + "hV", longs)
        except getopt.GetoptError as e:
            raise FenceError(f"Parse error: {e.msg}") from None
        if rest:
            warn(f"Unused arguments on command line: {' '.join(rest)}")
        raw: dict[str, str] = {}
        for flag, value in pairs:
            if flag in ("-h", "--help"):
                raw["action"] = "help"
                continue
            if flag in ("-V", "--version"):
                raw["action"] = "version"
                continue
            key = flag.lstrip("-").replace("-", "_")
            option = next((o for o in self.options if o.short == key), None) if len(flag) == 2 \
                else self.by_input_name[key]
            if option.secret:
                log.register_secret(value)
                warn(f"{option.name} on the command line is visible to every user of this host; "
                     f"give it on stdin, or use password_file or password_script")
            raw[option.name] = "1" if option.type == "boolean" else value
        return raw

    def _typed(self, raw: dict[str, str]) -> dict[str, Any]:
        typed: dict[str, Any] = {}
        for o in self.options:
            value = raw.get(o.name, o.default)
            if value is None:
                typed[o.name] = False if o.type == "boolean" else None
                continue
            try:
                typed[o.name] = o.parse(value)
            except ValueError as e:
                shown = "***" if o.secret else repr(value)
                raise FenceError(f"option {o.name}={shown} is not {e}") from None
        return typed

    def check_required(self, req: Request) -> None:
        for name in self.required_for_actions:
            if name == "password":
                if req.password in (None, ""):
                    raise FenceError("You have to enter password, password_file or password_script")
            elif name == "plug":
                if not req.plug and req.action not in DEVICE_ACTIONS:
                    raise FenceError("You have to enter plug (the node to fence) or nodename")
            elif req.options.get(name) in (None, ""):
                raise FenceError(f"You have to set {name}")

    # --- running -----------------------------------------------------------------------------------------------
    def run(self, argv: list[str], stdin=None) -> int:
        stdin = sys.stdin if stdin is None else stdin
        from_stdin = not argv
        warnings: list[str] = []
        nodename = None
        try:
            if from_stdin:
                raw, nodename = self.parse_stdin(stdin.readlines() if not stdin.isatty() else [], warnings.append)
            else:
                raw = self.parse_argv(argv, warnings.append)
        except (FenceError, UnicodeDecodeError) as e:
            raw, parse_error = {}, e
        else:
            parse_error = None
        action = raw.get("action", "reboot").lower()
        action = "metadata" if action == "meta-data" else action
        quiet = raw.get("quiet", "0").lower() in TRUE_WORDS
        verbose = raw.get("verbose", "0").lower() in TRUE_WORDS
        self.log = log.setup(self.name, stderr=not quiet, debug=verbose,
                             stderr_level=logging.DEBUG if verbose else logging.WARNING)
        for w in warnings:
            self.log.warning("%s", w)

        if action == "metadata":
            sys.stdout.buffer.write(self.metadata())
            return EC_OK
        if action == "version":
            print(f"{self.name} {__version__}")
            return EC_OK
        if action == "help":
            print(self.usage())
            return EC_OK
        if parse_error is not None:
            return self._fail(f"cannot read the options: {parse_error}")
        if action not in self.supported_actions():
            return self._fail(f"Unrecognised action '{action}'")
        try:
            options = self._typed(raw)
        except FenceError as e:
            return self._fail(str(e))
        req = Request(action, options, nodename, from_stdin, self.log)
        budget = options["deadline"] or 0
        try:
            with deadline.deadline(budget, f"{self.name} {action}"):
                self.check_required(req)
                self.validate(req)
                if action == "validate-all":
                    return EC_OK
                if action in ("off", "reboot") and options["delay"]:
                    self.log.info("delaying %s by %gs", action, options["delay"])
                    time.sleep(options["delay"])
                try:
                    return getattr(self, action.replace("-", "_"))(req)
                finally:
                    self.close(req)
        except FenceError as e:
            return self._fail(str(e))
        except deadline.DeadlineExceeded:
            return self._fail(f"Timed out: {action} did not finish within the {budget:g}s deadline")
        except KeyboardInterrupt:
            return self._fail(f"{action} interrupted")
        except Exception as e:                  # never a traceback: one line; the details at debug level
            self.log.debug("%s failed", action, exc_info=True)
            return self._fail(f"{action}: {type(e).__name__}: {e}")

    def _fail(self, message: str) -> int:
        line = "Failed: " + log.redact(message)
        if self.log is not None and self.log.handlers:
            self.log.error("%s", line)
        else:
            print(line, file=sys.stderr)
        return EC_FAILED

    def usage(self) -> str:
        lines = [f"Usage:\n\t{self.name} [options]", "Options:"]
        for o in sorted(self.options, key=lambda o: o.name):
            lines.append(f"   {o.getopt_mixed:<40}{o.shortdesc}")
        return "\n".join(lines)

    def main(self) -> None:
        sys.exit(self.run(sys.argv[1:]))
