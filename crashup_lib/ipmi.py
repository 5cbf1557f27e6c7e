"""Chassis power over IPMI 2.0 (RMCP+) with pyghmi, in-process: no ipmitool, no secret on any command line.

Only pyghmi's session layer is used (Get Chassis Status, Chassis Control): `pyghmi.ipmi.command` costs ~50 ms more
to import and re-sends Get Device ID before every power call for its OEM layer (notes/ipmi.md). pyghmi's known
defects are worked around here:
- no timeouts of its own (58 s when a BMC hangs after login): every login and request runs under a deadline;
- reply race (a reply consumed by its io thread before the caller waits stalls the caller until the resend
  timer): `_io_wait` returns at once when a reply is already queued;
- stale sessions (`initting_sessions` keyed by str, deleted by bytes): the table is cleared around each session;
- no logout at exit: close() always logs out, bounded;
- non-idempotent resends of slow commands: only power on/off are ever sent, never reset or cycle;
- a name that does not resolve raises a bare socket.gaierror (shown as "-2"), and getaddrinfo cannot be interrupted
  by the deadline's signal: the address is resolved first, in a thread, within the login timeout.
"""
from __future__ import annotations

import re
import socket
import threading

from crashup_lib import deadline, log

CHASSIS_NETFN = 0x00
GET_CHASSIS_STATUS = 0x01
CHASSIS_CONTROL = 0x02
POWER_DOWN, POWER_UP = 0x00, 0x01
PRIVILEGES = {"callback": 1, "user": 2, "operator": 3, "administrator": 4}
# a host name, an IPv4 or an IPv6 address (with a %zone): nothing else is worth a DNS query or fits in a message
_ADDRESS = re.compile(r"[A-Za-z0-9._:%-]{1,253}")


class BmcError(Exception):
    """A BMC problem, phrased for the operator (never containing the password)."""


class BmcTimeout(BmcError):
    """The BMC did not answer in time: the message starts with 'Timed out' so Pacemaker classes it so."""


_patched = False


def _session_module():
    """Import pyghmi's session layer once, with the reply-race fix applied."""
    global _patched
    from pyghmi.ipmi.private import session
    if not _patched:
        original = session._io_wait

        def _io_wait(timeout, myaddr=None, evq=None):
            if myaddr is None:
                return original(timeout, myaddr, evq)
            evt = threading.Event()
            if evq is not None:
                evq.append(evt)
            wake_at = timeout + session._monotonic_time()
            session.ioqueue.append((wake_at, evt, myaddr))
            # Registered first, checked second: a reply the io thread queued before we registered would never
            # set our event, and we would sleep until the resend timer.
            handlers = session.Session.bmc_handlers.get(myaddr, {})
            if any(getattr(s, "pktqueue", None) for s in handlers.values()):
                return
            if wake_at < session.selectdeadline:    # as pyghmi does: break the io thread out of its select
                sock = session.iosockets[0]
                sock.sendto(b"\x01", (session.myself, sock.getsockname()[1]))
            evt.wait()

        session._io_wait = _io_wait
        _patched = True
    return session


def _describe(error: Exception, where: str, username: str) -> BmcError:
    if isinstance(error, OSError):          # socket errors: their strerror, never a bare errno
        return BmcError(f"BMC {where}: {error.strerror or type(error).__name__}")
    text = str(error.args[0]) if getattr(error, "args", None) and error.args[0] is not None else ""
    text, lowered, user = log.one_line(text, 200), text.lower(), log.shown(username)
    if "incorrect password" in lowered:
        return BmcError(f"BMC {where} refused the login: wrong password for user {user}")
    if "unauthorized name" in lowered:
        return BmcError(f"BMC {where} refused the login: unknown user {user}")
    if "privilege" in lowered:
        return BmcError(f"BMC {where} refused the login: user {user} lacks the privilege level ({text})")
    if not text or "timeout" in lowered or "no longer connected" in lowered or "unable to" in lowered:
        return BmcTimeout(f"Timed out: no answer from BMC {where} (is it reachable and listening?)")
    if type(error).__module__.startswith("pyghmi"):
        return BmcError(f"BMC {where}: {text}")
    # pyghmi tripping over a reply it did not expect (IndexError, KeyError, struct.error): a bare "5" says nothing
    return BmcError(f"BMC {where}: unexpected reply ({type(error).__name__}: {text})")


def _resolve(address: str, port: int, timeout: float) -> None:
    """Raise a BmcError naming the address when it does not resolve. In a thread: a dead DNS server holds
    getaddrinfo for seconds per server, and the deadline's signal cannot interrupt it (it can interrupt the join)."""
    failure: list[BaseException] = []

    def lookup():
        try:
            socket.getaddrinfo(address, port, 0, socket.SOCK_DGRAM)
        except Exception as e:           # gaierror; UnicodeError for a label idna refuses
            failure.append(e)

    thread = threading.Thread(target=lookup, name=f"resolve {address}", daemon=True)
    thread.start()
    thread.join(timeout or None)
    if thread.is_alive():
        raise BmcTimeout(f"Timed out resolving BMC address {log.shown(address)} (no answer within {timeout:g}s)")
    if failure:
        reason = getattr(failure[0], "strerror", None) or "not a valid host name"
        raise BmcError(f"cannot resolve BMC address {log.shown(address)}: {reason}")


class Bmc:
    """One RMCP+ session to one BMC. Use as a context manager, or call close(): the BMC's session slot is freed."""

    def __init__(self, address: str, username: str, password: str, *, port: int = 623,
                 privilege: str = "administrator", cipher: str = "", timeout: float = 5.0):
        if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
            raise BmcError(f"BMC address {log.shown(address)} is not a host name or an IP address")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise BmcError(f"BMC port {log.shown(port)} is not a port number (1 to 65535)")
        if privilege not in PRIVILEGES:
            raise BmcError(f"privilege level {log.shown(privilege)} is not one of {', '.join(PRIVILEGES)}")
        if cipher not in ("", "3", "17"):
            raise BmcError(f"cipher suite {log.shown(cipher)} is not supported (3 or 17; empty negotiates 17, "
                           "then 3)")
        self.address, self.port, self.username = address, port, username
        self._password = password
        self.privilege, self.cipher, self.timeout = privilege, cipher, timeout
        self._session = None

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"

    def __enter__(self) -> "Bmc":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self):
        if self._session is not None:
            return self._session
        session = _session_module()
        session.Session.initting_sessions.clear()      # never hand us a dead half-open session
        original_init = session.Session._initsession
        if self.cipher == "3":                           # pyghmi tries SHA-256 (17) first; 3 is SHA-1
            def _initsession(s, *a, **k):
                original_init(s, *a, **k)
                s.attemptedhash = 1
            session.Session._initsession = _initsession
        try:
            _resolve(self.address, self.port, self.timeout)      # bounded by itself, and says so when it is slow
            with deadline.deadline(self.timeout, f"login to BMC {self.where}"):
                self._session = session.Session(bmc=self.address, userid=self.username,
                                                password=self._password, port=self.port,
                                                privlevel=PRIVILEGES[self.privilege])
        except deadline.DeadlineExceeded as e:
            if e.what != f"login to BMC {self.where}":
                raise
            raise BmcTimeout(f"Timed out: BMC {self.where} did not complete the login within {self.timeout:g}s") \
                from None
        except BmcError:
            raise
        except Exception as e:                            # pyghmi raises IpmiException, and worse on bad replies
            raise _describe(e, self.where, self.username) from None
        finally:
            session.Session._initsession = original_init
        return self._session

    def _request(self, command: int, data: tuple = (), what: str = ""):
        session = self._connect()
        try:
            with deadline.deadline(self.timeout, f"{what} on BMC {self.where}"):
                response = session.raw_command(netfn=CHASSIS_NETFN, command=command, data=data)
        except deadline.DeadlineExceeded as e:
            if e.what != f"{what} on BMC {self.where}":
                raise
            raise BmcTimeout(f"Timed out: BMC {self.where} did not answer {what} within {self.timeout:g}s") \
                from None
        except Exception as e:
            raise _describe(e, self.where, self.username) from None
        if response.get("error"):
            code = response.get("code")
            shown = f" (completion code 0x{code:02x})" if isinstance(code, int) else ""
            raise BmcError(f"BMC {self.where} rejected {what}: {response['error']}{shown}")
        return response

    def power_state(self) -> str:
        """'on' or 'off', as the BMC reports it (Get Chassis Status, byte 1 bit 0)."""
        data = self._request(GET_CHASSIS_STATUS, what="Get Chassis Status").get("data") or b""
        if not data:
            raise BmcError(f"BMC {self.where} answered Get Chassis Status without data")
        return "on" if data[0] & 0x01 else "off"

    def set_power(self, state: str) -> None:
        """Send Chassis Control power down/up and return; the caller confirms by reading the state back."""
        code = {"off": POWER_DOWN, "on": POWER_UP}[state]
        self._request(CHASSIS_CONTROL, (code,), what=f"power {state}")

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        mod = _session_module()
        try:
            with deadline.deadline(1.0, f"logout from BMC {self.where}"):
                session.logout()
        except (Exception, deadline.DeadlineExceeded):
            pass                                          # the BMC reclaims the slot at its idle timeout
        finally:
            mod.Session.initting_sessions.clear()
