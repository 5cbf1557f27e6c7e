"""What the lab asks /proc about its own processes (the broker's, cinder's): standard library only."""
from __future__ import annotations

import contextlib
import pathlib


def alive(pid: int | None, needle: bytes) -> bool:
    """pid runs (not a zombie) and its command line holds needle (a recycled pid is not ours)."""
    if not pid:
        return False
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return needle in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def rss(pid: int) -> int:
    """Resident memory of pid in bytes (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
