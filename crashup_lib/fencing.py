"""A framework for fence agents that follows the fence-agents contract exactly (see fence-agents' fencing.py).

Input: options as `key=value` lines on stdin when there are no arguments (how Pacemaker's fencer calls), else the
command line; `#` lines skipped, quotes stripped, `-`/`_` interchangeable, old names (ipaddr, login, passwd, port)
accepted, unknown keys warned about and ignored, `nodename`/`nodeid` taken silently. Actions: on, off, reboot
(default), status, monitor, list, list-status, metadata, validate-all. Exit codes: 0 success; status 0 ON, 2 OFF;
every failure 1 with one "Failed: ..." line on stderr (Pacemaker classes "Timed out" as a timeout).

Input is untrusted: stdin is read as bytes, bounded in size and time; every value must be UTF-8 text without control
characters and every number finite and within its option's bounds; a value quoted in a message is shortened and
escaped (log.shown), and anything unforeseen still ends as the one Failed line, never a traceback.

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
import os
import re
import shlex
import sys
import time
import traceback
from typing import Any

from crashup_lib import __version__, deadline, log, proc
from crashup_lib.words import FALSE_WORDS, TRUE_WORDS

EC_OK, EC_FAILED, EC_STATUS_OFF = 0, 1, 2
ACTIONS = ("on", "off", "reboot", "status", "monitor", "list", "list-status", "metadata", "validate-all")
IGNORED_SILENTLY = ("nodename", "nodeid")      # Pacemaker sends these to every agent
DEVICE_ACTIONS = ("monitor", "list", "list-status", "validate-all")   # about the device, not one node
MAX_INPUT = 64 * 1024          # bytes of stdin: Pacemaker sends a handful of lines
INPUT_TIMEOUT = 10.0           # seconds to wait for the end of stdin: Pacemaker writes it at once and closes it
MAX_SECRET = 4096              # bytes read of a password file or a password script's output: one short line
SCRIPT_TIMEOUT = 10.0          # seconds a password script may take, at most (less when the deadline is nearer)
MAX_LINE = 400                 # characters of a Failed or Success line
MAX_WARNINGS = 20              # warnings shown of one input; the rest are counted
MAXIMUM = {"integer": 2**31 - 1, "second": 3600}   # an Option's maximum unless it names its own


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
    minimum: float = 0                         # integer and second: inclusive bounds (maximum None: MAXIMUM[type])
    maximum: float | None = None

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
            return self._number(raw)
        if self.type == "select" and raw not in self.choices:
            raise ValueError("one of " + ", ".join(self.choices))
        return raw

    def _number(self, raw: str) -> float | int:
        high = MAXIMUM[self.type] if self.maximum is None else self.maximum
        try:
            value = float(raw) if self.type == "second" else int(raw)
        except ValueError:                     # also int()'s digit limit: a 5000-digit integer is no port
            value = None
        # written so that nan fails it too: a nan deadline compares false with everything, and disabled the deadline
        if value is None or not self.minimum <= value <= high:
            kind = "a number of seconds" if self.type == "second" else "an integer"
            raise ValueError(f"{kind} from {_figure(self.minimum)} to {_figure(high)}")
        return value


def _figure(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# Options every crashup fence agent has.
COMMON_OPTIONS = (
    Option("action", "Fencing action", default="reboot", short="o", metavar="action"),
    Option("plug", "Name of the node to fence, as Pacemaker names it", short="n", metavar="id", obsoletes="port"),
    Option("delay", "Wait X seconds before fencing is started", type="second", default="0", metavar="seconds",
           maximum=3600),
    Option("power_timeout", "Test X seconds for status change after ON/OFF", type="second", default="20",
           metavar="seconds", maximum=600),
    Option("power_wait", "Wait X seconds after issuing ON/OFF", type="second", default="0", metavar="seconds",
           maximum=600),
    Option("login_timeout", "Wait X seconds for the device to answer a login or a request", type="second",
           default="5", metavar="seconds", maximum=600),
    # at least 1: a deadline of 0 (or nan) would be none, and a hung device would outlive Pacemaker's timeout
    Option("deadline", "Hard limit on one action, in seconds; keep it below Pacemaker's action timeout "
           "(pcmk_off_timeout, default stonith-timeout 60s)", type="second", default="50", metavar="seconds",
           minimum=1, maximum=3600),
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
    if req.options.get("password_file"):
        return _password_from_file(req.options["password_file"])
    if req.options.get("password_script"):
        return _password_from_script(req.options["password_script"])
    return None


# Messages say "the password file/script", not "password_file: ...": a key: value pair of a secret-looking key is
# what log.redact blanks out, and the reason would go with it.
def _password_from_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET + 1)      # /dev/zero or a log file given by mistake: never more
    except OSError as e:
        raise FenceError(f"cannot read the password file {log.shown(path)}: {e.strerror}") from None
    return _password_line(data, f"the password file {log.shown(path)}")


def _password_from_script(script: str) -> str:
    try:
        argv = shlex.split(script)
    except ValueError as e:
        raise FenceError(f"cannot read the password script command {log.shown(script)}: {e}") from None
    if not argv:
        raise FenceError("the password script command is empty")
    timeout = min(SCRIPT_TIMEOUT, deadline.remaining(SCRIPT_TIMEOUT))
    try:      # in a session of its own: on a timeout its whole process group is killed, children and all
        done = proc.run(argv, timeout, limit=MAX_SECRET + 1)
    except proc.TimedOut:
        raise FenceTimeout(f"Timed out: the password script {log.shown(argv[0])} did not finish within "
                           f"{timeout:.3g}s (killed)") from None
    except proc.ProcError as e:
        raise FenceError(f"cannot run the password script: {e}") from None
    if done.returncode != 0:
        raise FenceError(f"the password script {log.shown(argv[0])} exited with status {done.returncode}")
    # proc decodes with errors="replace": a byte that was not UTF-8 is U+FFFD, which _password_line refuses
    return _password_line(done.stdout.encode("utf-8"), f"the output of the password script {log.shown(argv[0])}",
                          strip=None)          # all trailing white space, as fence-agents take a script's output


def _password_line(data: bytes, source: str, strip: bytes | None = b"\r") -> str:
    """The password: the first line of `data` (at most MAX_SECRET + 1 bytes of it were read), registered as a
    secret. Errors name the source, never the content."""
    line, newline, _ = data.partition(b"\n")
    if not newline and len(data) > MAX_SECRET:
        raise FenceError(f"{source} has no line break in its first {MAX_SECRET} bytes: not a password")
    value = line.rstrip(strip).decode("utf-8", "replace")
    log.register_secret(value)
    problem = log.text_problem(value) or ("valid UTF-8" if "\ufffd" in value else None)
    if problem:
        raise FenceError(f"the first line of {source} is not {problem}")
    if not value:
        raise FenceError(f"the first line of {source} is empty")
    return value


def success(text: str) -> None:
    """Print the 'Success: ...' line of an action; what it quotes (a host, nova's words) is redacted, one line."""
    print("Success: " + log.one_line(log.redact(text), MAX_LINE))


def _check_text(name: str, value: str, where: str = "", secret: bool = False) -> None:
    """Refuse a value no fence option can hold: not UTF-8 (undecodable stdin bytes, argv's surrogate escapes), with
    control characters (it would split or rewrite a log line) or, but in a password, anything else not printable
    (tab, invisible or bidi formatting characters): then any value a message quotes prints as it is. The value is not
    shown: it is garbage, or a password."""
    problem = log.text_problem(value)
    if not problem and not secret and not value.isprintable():
        problem = "printable text (no tab, invisible or formatting character)"
    if problem:
        raise FenceError(f"option {name}{where} is not {problem}")


def _escaped(text: str) -> str:
    """Text that is garbage more often than not (unknown option names, getopt's complaints), escaped to ASCII."""
    return ascii(text)[1:-1]


def _where(error: BaseException) -> str:
    """A traceback as one line, innermost frame first: Pacemaker logs an agent's stderr line by line."""
    frames = traceback.extract_tb(error.__traceback__)
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))


def _read_input(stream) -> bytes:
    """stdin as bytes, at most MAX_INPUT of them, within INPUT_TIMEOUT: decoding is the parser's, line by line."""
    if stream is None or stream.isatty():
        return b""
    source = getattr(stream, "buffer", stream)
    try:
        with deadline.deadline(INPUT_TIMEOUT, "reading the options on stdin"):
            data = source.read(MAX_INPUT + 1)
    except deadline.DeadlineExceeded:
        raise FenceTimeout(f"Timed out: stdin was not closed within {INPUT_TIMEOUT:g}s") from None
    if isinstance(data, str):                  # a text stream without a buffer (an agent run in-process)
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_INPUT:
        raise FenceError(f"more than {MAX_INPUT // 1024} KiB on stdin: Pacemaker sends a few lines of options")
    return data


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
        try:
            pairs, rest = getopt.gnu_getopt(argv, shorts + "hV", longs)
        except getopt.GetoptError as e:
            raise FenceError(f"Parse error: {log.one_line(_escaped(e.msg), 120)}") from None
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
