"""FenceAgent: the actions, metadata and the run of one invocation (see crashup_lib.fencing)."""
from __future__ import annotations

import getopt
import logging
import re
import sys
import time
from typing import Any

from crashup_lib import __version__, deadline, log
from crashup_lib.fencing.options import (DEVICE_ACTIONS, EC_FAILED, EC_OK, EC_STATUS_OFF, IGNORED_SILENTLY, MAX_LINE,
                                         MAX_WARNINGS, COMMON_OPTIONS, FenceError, FenceTimeout, Option, Request,
                                         _check_text, _escaped, _read_input, _where, success)
from crashup_lib.words import TRUE_WORDS


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
            success("Already ON")
            return EC_OK
        self._change_power(req, "on")
        success("Powered ON")
        return EC_OK

    def off(self, req: Request) -> int:
        if self._read_state(req) == "off":
            success("Already OFF")
            return EC_OK
        self._change_power(req, "off")
        success("Powered OFF")
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
        success("Rebooted")
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
    def parse_stdin(self, data: bytes, warn) -> tuple[dict[str, str], str | None]:
        entries = []
        for number, line in enumerate(data.split(b"\n"), 1):
            # surrogateescape: a byte that is not UTF-8 reaches _check_text, which names its option and line
            line = line.decode("utf-8", "surrogateescape").strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition("=")
            entries.append((number, name.strip().replace("-", "_"), re.sub(r'^"(.*)"$', r"\1", value.strip())))
        self._register_secrets((name, value) for _, name, value in entries)
        raw: dict[str, str] = {}
        nodename = None
        for number, name, value in entries:
            option = self.by_input_name.get(name)
            if option is None and name != "nodename":
                if name not in IGNORED_SILENTLY:
                    warn(f"Parse error: Ignoring unknown option {log.shown(_escaped(name), 60)}")
                continue
            _check_text(option.name if option else name, value, f" on line {number}",
                        option is not None and option.secret)
            if option is None:
                nodename = value
            else:
                raw[option.name] = value
        return raw, nodename

    def parse_argv(self, argv: list[str], warn) -> dict[str, str]:
        shorts = "".join(o.short + ("" if o.type == "boolean" else ":") for o in self.options if o.short)
        longs = [o.longopt + ("" if o.type == "boolean" else "=") for o in self.options]
        longs += [o.obsoletes.replace("_", "-") + ("" if o.type == "boolean" else "=")
                  for o in self.options if o.obsoletes]
        longs += ["help", "version"]
        self._register_argv_secrets(argv)
        try:
            pairs, rest = getopt.gnu_getopt(argv, shorts + "hV", longs)
        except getopt.GetoptError as e:      # its message quotes an argument, which may be (or hold) the password
            raise FenceError(f"Parse error: {log.one_line(log.redact(_escaped(e.msg)), 120)}") from None
        if rest:                 # not quoted: `-o -p secret` leaves the password there, never registered
            warn(f"{len(rest)} unused argument(s) on the command line, ignored")
        entries = []                           # (option, value); option None: value is the action help/version
        for flag, value in pairs:
            if flag in ("-h", "--help", "-V", "--version"):
                entries.append((None, "help" if flag in ("-h", "--help") else "version"))
                continue
            key = flag.lstrip("-").replace("-", "_")
            option = next(o for o in self.options if o.short == key) if len(flag) == 2 else self.by_input_name[key]
            entries.append((option, "1" if option.type == "boolean" else value))
        self._register_secrets((option.name, value) for option, value in entries if option)
        raw: dict[str, str] = {}
        for option, value in entries:
            if option is None:
                raw["action"] = value
                continue
            _check_text(option.name, value, secret=option.secret)
            if option.secret:
                warn(f"{option.name} on the command line is visible to every user of this host; "
                     f"give it on stdin, or use password_file or password_script")
            raw[option.name] = value
        return raw

    def _register_argv_secrets(self, argv: list[str]) -> None:
        """The values of secret options on a command line, registered before getopt may quote one in an error:
        `-p X`, `-pX`, clusters as getopt reads them (`-vp X`, `-vpX`), `--password X`, `--password=X` and
        getopt's unique prefixes (`--pass X`)."""
        secret = {o.short for o in self.options if o.secret and o.short}
        valued = {o.short for o in self.options if o.short and o.type != "boolean"}
        longs = [f"--{name}" for o in self.options if o.secret
                 for name in (o.longopt, (o.obsoletes or "").replace("_", "-")) if name]
        for arg, following in zip(argv, [*argv[1:], ""]):
            head, eq, value = arg.partition("=")
            if arg.startswith("--"):
                if len(head) > 3 and any(name.startswith(head) for name in longs):
                    log.register_secret(value if eq else following)
                continue
            if not arg.startswith("-"):
                continue
            for i, letter in enumerate(arg[1:], 1):     # getopt: flags until one that takes a value, which is
                if letter in valued:                    # the cluster's rest, or else the next argument
                    if letter in secret:
                        log.register_secret(arg[i + 1:] or following)
                    break

    def _register_secrets(self, pairs) -> None:
        """Before anything is checked or warned about: no message may quote a secret that redact does not know."""
        for name, value in pairs:
            option = self.by_input_name.get(name)
            if option is not None and option.secret:
                log.register_secret(value)

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
                shown = log.REDACTED if o.secret else log.shown(value)
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
        """One invocation. Every failure, foreseen or not, ends as one 'Failed:' line and exit 1, never a traceback."""
        self.log = None
        try:
            return self._run(argv, sys.stdin if stdin is None else stdin)
        except KeyboardInterrupt:
            return self._fail("interrupted")
        except Exception as e:                  # a defect of ours or of an agent: one line; where, at debug level
            if self.log is not None:
                self.log.debug("%s raised at %s", type(e).__name__, _where(e))
            return self._fail(f"{type(e).__name__}: {e}")

    def _run(self, argv: list[str], stdin) -> int:
        warnings: list[str] = []
        nodename, parse_error = None, None
        try:
            if argv:
                raw = self.parse_argv(argv, warnings.append)
            else:
                raw, nodename = self.parse_stdin(_read_input(stdin), warnings.append)
        except FenceError as e:
            raw, parse_error = {}, e
        action = raw.get("action", "reboot").lower()
        action = "metadata" if action == "meta-data" else action
        quiet = raw.get("quiet", "0").lower() in TRUE_WORDS
        verbose = raw.get("verbose", "0").lower() in TRUE_WORDS
        self.log = log.setup(self.name, stderr=not quiet, debug=verbose,
                             stderr_level=logging.DEBUG if verbose else logging.WARNING)
        for w in warnings[:MAX_WARNINGS]:
            self.log.warning("%s", w)
        if len(warnings) > MAX_WARNINGS:
            self.log.warning("%d more warnings about the input not shown", len(warnings) - MAX_WARNINGS)

        if parse_error is not None:
            return self._fail(f"cannot read the options: {parse_error}")
        if action == "metadata":
            sys.stdout.buffer.write(self.metadata())
            return EC_OK
        if action == "version":
            print(f"{self.name} {__version__}")
            return EC_OK
        if action == "help":
            print(self.usage())
            return EC_OK
        if action not in self.supported_actions():
            return self._fail(f"Unrecognised action {log.shown(action)}")
        try:
            options = self._typed(raw)
        except FenceError as e:
            return self._fail(str(e))
        req = Request(action, options, nodename, not argv, self.log)
        budget = options["deadline"]
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
        except Exception as e:                  # never a traceback: one line; where, at debug level
            self.log.debug("%s: %s raised at %s", action, type(e).__name__, _where(e))
            return self._fail(f"{action}: {type(e).__name__}: {e}")

    def _fail(self, message: str) -> int:
        """The one 'Failed:' line: redacted, printable, short; on stderr whatever the logging (quiet, none yet)."""
        line = "Failed: " + log.one_line(log.redact(message), MAX_LINE)
        logger = self.log
        if logger is not None and logger.handlers:     # none: logging's last resort would print it a second time
            logger.error("%s", line)
        if logger is None or not any(getattr(h, "stream", None) is sys.stderr for h in logger.handlers):
            print(line, file=sys.stderr)
        return EC_FAILED

    def usage(self) -> str:
        lines = [f"Usage:\n\t{self.name} [options]", "Options:"]
        for o in sorted(self.options, key=lambda o: o.name):
            lines.append(f"   {o.getopt_mixed:<40}{o.shortdesc}")
        return "\n".join(lines)

    def main(self) -> None:
        sys.exit(self.run(sys.argv[1:]))
