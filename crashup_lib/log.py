"""Logging shared by agents, fence agents, the daemon and the CLI: ocf_log-style destinations, secrets redacted.

Destinations follow ocf-shellfuncs' ha_log: HA_LOGFILE (and HA_DEBUGLOG for debug) when Pacemaker sets them, else
syslog; stderr as well when interactive, or always for fence agents (Pacemaker's fencer logs their stderr).
Every record passes through the redactor, so a secret registered once never reaches any destination.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time

REDACTED = "***"
_secrets: set[str] = set()
# key=value and "key": value pairs whose value is a secret, whatever the source (stdin echo, URLs, exceptions);
# not names of where a secret is kept (password_file, password_script, secret_file: their values are paths)
_SECRET_PAIR = re.compile(
    r"(?i)((?:password|passwd|secret|token|auth_?key|credential)(?![\w-]*(?:_file|_script|_path|_command))"
    r"[\w-]*[\"']?\s*[=:]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\s,;&}]+)")
# user:password@ in URLs; a generated password may hold '/', ':' or '@' (the last '@' before the host ends it)
_URL_CREDENTIALS = re.compile(r"(//[^/\s:@]+:)(\S+)(@[^@\s]*)")
# characters that would end or rewrite a line on a terminal or in a log: C0 but tab, DEL, C1, line separators
# and bidirectional overrides, which reorder what a terminal shows
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SHOWN_WIDTH = 80


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is replaced wherever it appears in a log line or error message."""
    if value and len(value) >= 3:           # shorter strings would blank out ordinary text; pairs still catch them
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _SECRET_PAIR.sub(lambda m: m.group(1) + REDACTED, text)
    return _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def one_line(text: str, width: int = 1000) -> str:
    """`text` as one printable line of at most `width` characters: control characters and undecodable bytes are
    escaped, so nothing a user typed can end a line, move a terminal's cursor or fake a log record."""
    if not text.isprintable():          # zero-width and format characters too, not only C0/C1
        text = "".join(c if c.isprintable() or c == "\t" else ascii(c)[1:-1] for c in text)
    return text if len(text) <= width else text[:width - 3] + "..."


def error_line(error: BaseException | str, width: int = 300) -> str:
    """An error (or a service's message) as one log line: whitespace folded, secrets redacted, shortened. Every
    "one line of what went wrong" in crashup is this."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):      # KeyError() says nothing: its name does
        text = type(error).__name__
    return one_line(redact(text), width)


def shown(value: object, width: int = SHOWN_WIDTH) -> str:
    """A value someone gave, quoted for a message: redacted, one printable line, shortened (a 1 MB option value
    must not become a 1 MB log line)."""
    return "'" + one_line(redact(str(value)), width) + "'"


def text_problem(value: str) -> str | None:
    """Why `value` cannot be a one-line text setting (a control character, an undecodable byte), or None."""
    if _CONTROL.search(value):
        return "text without control characters (newline, carriage return, escape...)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "valid UTF-8"
    return None


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:                  # render the traceback now, redacted, and drop the live objects
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING",
                logging.ERROR: "ERROR", logging.CRITICAL: "CRIT"}


class HaLogFormatter(logging.Formatter):
    """The line format of ocf-shellfuncs' ha_log: 'tag:<TAB>date LEVEL: message'."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        line = f"{self.tag}:\t{when} {_LEVEL_NAMES.get(record.levelno, record.levelname)}: {record.getMessage()}"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _AppendFileHandler(logging.Handler):
    """Open, append, close per record: agents are short-lived and many write the same file concurrently."""

    def __init__(self, path: str, level: int):
        super().__init__(level)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(self.format(record) + "\n")
        except OSError:
            pass                              # a full or missing log disk must never fail a cluster action


def _syslog_handler(ident: str) -> logging.Handler | None:
    if not os.path.exists("/dev/log"):        # no syslog daemon (containers, the lab): nothing to send to
        return None
    import logging.handlers

    class QuietSysLogHandler(logging.handlers.SysLogHandler):
        def handleError(self, record):        # a dead syslog must never print a traceback into an agent's output
            pass
    try:
        handler = QuietSysLogHandler(address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(levelname)s: %(message)s"))
    return handler


def setup(ident: str, *, instance: str | None = None, stderr: bool | None = None, debug: bool | None = None,
          syslog: bool = True, stderr_level: int = logging.DEBUG) -> logging.Logger:
    """Configure the 'crashup' logger for a process and return it.

    ident: the program name (agent or command); instance: OCF_RESOURCE_INSTANCE for agents;
    stderr: None = only when interactive; debug: None = from HA_debug (as ocf_log does); stderr_level: fence
    agents show only warnings there unless verbose, as fence-agents do (Pacemaker logs their stderr).
    """
    if debug is None:
        debug = os.environ.get("HA_debug", "0") not in ("", "0", "false", "no", "off")
    logger = logging.getLogger("crashup")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    tag = f"{ident}({instance})[{os.getpid()}]" if instance else f"{ident}[{os.getpid()}]"

    logfile, debuglog = os.environ.get("HA_LOGFILE"), os.environ.get("HA_DEBUGLOG")
    if logfile:
        h = _AppendFileHandler(logfile, logging.INFO)
        h.setFormatter(HaLogFormatter(tag))
        logger.addHandler(h)
    if debug and debuglog and debuglog != logfile:
        h = _AppendFileHandler(debuglog, logging.DEBUG)
        h.setFormatter(HaLogFormatter(tag))
        logger.addHandler(h)
    elif debug and logfile:
        logger.handlers[0].setLevel(logging.DEBUG)
    if not logfile and syslog:
        h = _syslog_handler(ident)
        if h:
            logger.addHandler(h)
    if stderr is None:
        stderr = sys.stderr.isatty()
    if stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(stderr_level)
        h.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(h)
    # on the handlers, not the logger: a logger's filters never see records of its children (crashup.events, ...)
    redacting = RedactingFilter()
    for h in logger.handlers:
        h.addFilter(redacting)
    # Libraries' own records and Python warnings (keystoneauth prints an auth_url, credentials and all) reach the
    # same redacting handlers instead of a bare stderr; only their warnings, their chatter is not ours to show.
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = logger.handlers
    root.setLevel(logging.WARNING)
    return logger


def get(name: str | None = None) -> logging.Logger:
    return logging.getLogger(f"crashup.{name}" if name else "crashup")
