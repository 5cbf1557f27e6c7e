"""Read the small files operators and crashup keep (crashup.conf, clouds.yaml, inventories, caches, journals)
without ever blocking, growing without bound or raising anything but one FileProblem.

A FIFO must not hang a monitor, /dev/zero must not fill memory, a directory or a Latin-1 file must be one clear
line: each caller wraps the problem in its own error ("config: ...", "clouds file ...") or treats it as no file.
"""
from __future__ import annotations

import io
import os
import stat


class FileProblem(ValueError):
    """Why a file cannot be read, in a few words ('no such file', 'is a directory, not a file', ...)."""


class Missing(FileProblem):
    """There is no such file (which some callers take as empty)."""


def open_regular(path: str) -> io.BufferedReader:
    """The file opened for binary reading; FileProblem unless it is a regular file we may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)     # checked before anything reads it
    except FileNotFoundError:
        raise Missing("no such file") from None
    except OSError as e:
        raise FileProblem(f"cannot read it: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem("is a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small(path: str, limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    with open_regular(path) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise FileProblem(f"cannot read it: {e.strerror or e}") from None
    if len(data) > limit:
        raise FileProblem(f"larger than {limit // 1024} KiB" if limit >= 1024 else f"larger than {limit} bytes")
    return data


def utf8(data: bytes) -> str:
    """Text that must be UTF-8; FileProblem naming the line of the first bad byte (not the line: it may hold a
    password)."""
    if b"\x00" in data:
        raise FileProblem("binary data (a NUL byte), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FileProblem(f"line {line}: byte 0x{data[e.start]:02x} is not UTF-8 (save the file as UTF-8)") from None


def read_text(path: str, limit: int) -> str:
    return utf8(read_small(path, limit))
