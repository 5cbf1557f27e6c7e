"""A pinned virtualenv for an OpenStack service the lab runs apart from crashup's own (the nova box, the schemas).

Standard library only. A venv is current when its stamp file holds the hash of its requirement and constraint files
(and of the base interpreter): then `ensure()` returns at once; otherwise it installs under a lock file, so that
concurrent callers (make, a test fixture) wait for one install instead of racing, runs import checks (a broken
install fails here, in one line, rather than later inside a service), and writes the stamp last.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import pathlib
import subprocess
import sys
import time
from typing import Callable, Sequence

BASE_PYTHON = "/usr/bin/python3"


class VenvError(RuntimeError):
    """One line: which step failed and why."""


@dataclasses.dataclass(frozen=True)
class PinnedVenv:
    label: str                                  # "nova venv", "schemas venv": log lines and errors
    default_path: pathlib.Path
    requirements: pathlib.Path
    constraints: tuple[pathlib.Path, ...]
    stamp_name: str
    checks: tuple[str, ...] = ()                # python -c snippets run once installed
    check_env: tuple[tuple[str, str], ...] = ()
    install_timeout: float = 900.0              # a cold pip cache takes 1-3 min here; this only stops a hung index

    def path(self, venv: os.PathLike | str | None = None) -> pathlib.Path:
        return pathlib.Path(venv or self.default_path)

    def python(self, venv: os.PathLike | str | None = None) -> pathlib.Path:
        return self.path(venv) / "bin" / "python"

    def requirements_hash(self) -> str:
        h = hashlib.sha256()
        for path in (self.requirements, *self.constraints):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update(BASE_PYTHON.encode())
        return h.hexdigest()

    def is_current(self, venv: os.PathLike | str | None = None) -> bool:
        try:
            stamp = (self.path(venv) / self.stamp_name).read_text().strip()
        except OSError:
            return False
        return stamp == self.requirements_hash() and os.access(self.python(venv), os.X_OK)

    def ensure(self, venv: os.PathLike | str | None = None, *, force: bool = False, quiet: bool = False,
               say: Callable[[str], None] | None = None,
               on_reinstall: Callable[[pathlib.Path], None] = lambda venv: None) -> pathlib.Path:
        """Create or refresh the venv; returns its path. `on_reinstall(venv)` runs before an install (drop caches
        derived from the old one)."""
        venv = self.path(venv)
        t0 = time.monotonic()
        say = (lambda m: None) if quiet else (say or (lambda m: print(m, file=sys.stderr, flush=True)))
        if not force and self.is_current(venv):
            say(f"{self.label} {venv} up to date ({time.monotonic() - t0:.2f} s)")
            return venv
        venv.mkdir(parents=True, exist_ok=True)
        with open(venv / (self.stamp_name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and self.is_current(venv):     # another caller finished it while we waited
                say(f"{self.label} {venv} up to date ({time.monotonic() - t0:.2f} s)")
                return venv
            want = self.requirements_hash()
            (venv / self.stamp_name).unlink(missing_ok=True)
            on_reinstall(venv)
            py = self.python(venv)
            if not os.access(py, os.X_OK):
                say(f"creating {venv} with {BASE_PYTHON} -m venv")
                self._run([BASE_PYTHON, "-m", "venv", str(venv)], "python -m venv", 120)
            say(f"pip install -r {self.requirements.name} (pinned; a fresh install takes ~1-2 min)")
            t1 = time.monotonic()
            cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
                   "-r", str(self.requirements)]
            for c in self.constraints:
                cmd += ["-c", str(c)]
            self._run(cmd, "pip install", self.install_timeout)
            say(f"pip install done in {time.monotonic() - t1:.1f} s")
            for check in self.checks:                   # one process each: oslo.config's global options clash
                self._run([str(py), "-c", check], f"check {check[:60]!r}", 120, env=self.env())
            tmp = venv / (self.stamp_name + ".tmp")
            tmp.write_text(want + "\n")
            os.replace(tmp, venv / self.stamp_name)
        say(f"{self.label} {venv} ready in {time.monotonic() - t0:.1f} s")
        return venv

    def env(self) -> dict[str, str]:
        """The environment for the venv's python: crashup's own venv must not leak into the service's."""
        env = dict(os.environ, **dict(self.check_env))
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(var, None)
        return env

    def _run(self, cmd: Sequence[str], what: str, timeout: float, env: dict | None = None) -> None:
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise VenvError(f"{self.label}: {what} did not finish within {timeout:.0f} s") from None
        if p.returncode != 0:
            raise VenvError(f"{self.label}: {what} failed (exit {p.returncode}): {last_line(p.stdout)}")


def last_line(text: str) -> str:
    """The line that says why: the last non-blank, non-indented line (a traceback's exception line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
    return lines[-1][:400] if lines else "(no output)"
