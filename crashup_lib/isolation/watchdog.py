"""The guard's watchdog device (Linux's watchdog API, as sbd uses it): armed when opened, petted by a write, reset
of the node when not petted within its timeout; a clean stop writes the magic 'V' before closing, which disarms it
(drivers built with nowayout ignore that: then stopping the guard resets the node, by the operator's choice).

The guard pets only while healthy (decide.pets): a guard that hangs, or a node cut off for longer than the device's
timeout, is reset whatever the guard does. A FIFO works as a device too (the lab's tests/lab/softdog.py reads one):
the timeout ioctl is then skipped.
"""
from __future__ import annotations

import array
import fcntl
import os
import stat

from crashup_lib import log

LOG = log.get("isolation")
WDIOC_SETTIMEOUT = 0xC0045706             # _IOWR('W', 6, int)
MAGIC_CLOSE = b"V"


class WatchdogError(RuntimeError):
    """The device cannot be opened or petted; one line."""


class Watchdog:
    def __init__(self, path: str, timeout: float):
        self.path, self.timeout = path, timeout
        self.fd: int | None = None

    def open(self) -> None:
        """Arm the device with our timeout (whole seconds, rounded up). A FIFO without a reader is an error, not a
        wait (O_NONBLOCK): nothing would watch the node."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise WatchdogError(f"watchdog {self.path}: cannot open: {e.strerror}") from None
        self.fd = fd
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            wanted = int(-(-self.timeout // 1))
            buf = array.array("i", [wanted])     # the driver writes back the timeout it really set
            try:
                fcntl.ioctl(fd, WDIOC_SETTIMEOUT, buf, True)
            except OSError as e:
                self.close(disarm=True)
                raise WatchdogError(f"watchdog {self.path}: cannot set a {self.timeout:g}s timeout: "
                                    f"{e.strerror}") from None
            if buf[0] > wanted:                  # the fence agent waits for the requested one: it would be short
                self.close(disarm=True)
                raise WatchdogError(f"watchdog {self.path}: the driver set a {buf[0]}s timeout, longer than the "
                                    f"{wanted}s asked for")
        LOG.info("watchdog %s armed (%gs)", self.path, self.timeout)

    def pet(self) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, b"\0")
        except OSError as e:
            raise WatchdogError(f"watchdog {self.path}: cannot pet: {e.strerror}") from None

    def close(self, disarm: bool) -> None:
        """Close the device; disarm (the magic close) only on a clean stop: a guard that dies otherwise leaves it
        armed, and the node is reset."""
        if self.fd is None:
            return
        try:
            if disarm:
                os.write(self.fd, MAGIC_CLOSE)
        except OSError as e:
            LOG.warning("watchdog %s: magic close failed: %s", self.path, e.strerror)
        finally:
            os.close(self.fd)
            self.fd = None
        LOG.info("watchdog %s %s", self.path, "disarmed" if disarm else "closed armed")
