"""The fence-agents input contract: typed options, one invocation's request, passwords from stdin, a file or a
script, and the checks every value passes before any message quotes it (see crashup_lib.fencing)."""
from __future__ import annotations

import dataclasses
import os
import traceback
from typing import Any

from crashup_lib import deadline, files, log, proc
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
        with files.open_regular(path) as f:    # a FIFO must not hang the fencing
            data = f.read(MAX_SECRET + 1)      # /dev/zero or a log file given by mistake: never more
    except (files.FileProblem, OSError) as e:
        raise FenceError(f"cannot read the password file {log.shown(path)}: {getattr(e, 'strerror', None) or e}") \
            from None
    return _password_line(data, f"the password file {log.shown(path)}")


def _password_from_script(script: str) -> str:
    try:
        argv = proc.split(script)
    except ValueError as e:
        raise FenceError(f"the password script command {log.shown(script)}: {e}") from None
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


