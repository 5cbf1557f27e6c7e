"""Real nova, cinder and glance database schemas, made by the services' own migrations (their `db sync`).

Standard library only: this runs under crashup's venv or a plain python3.  The services are installed into their
own venv (.venv-schemas: nova 34, cinder 29, glance 33 and PyMySQL, pinned by schemabox/requirements.txt on top of
novabox/constraints.txt); schemabox/sync.py runs one service's migrations there against a database URL.

    python -m tests.lab.schemas                  # create/refresh the venv (a no-op in ~0 s when up to date)
    python -m tests.lab.schemas --force          # reinstall even if the stamp matches
    python -m tests.lab.schemas --sqlite DIR     # also write a fresh cinder/glance/nova sqlite schema into DIR

In tests:  make_schema("cinder", url) migrates any URL (sqlite, mysql+pymysql);  sqlite_schema("nova", tmp_path)
copies a cached pristine sqlite file (milliseconds after the first one per venv).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Sequence

REPO = pathlib.Path(__file__).resolve().parents[2]
BOX_DIR = pathlib.Path(__file__).resolve().parent / "schemabox"
SYNC = BOX_DIR / "sync.py"
REQUIREMENTS = BOX_DIR / "requirements.txt"
CONSTRAINTS = (REPO / "tests" / "lab" / "novabox" / "constraints.txt", BOX_DIR / "constraints.txt")
VENV = pathlib.Path(os.environ.get("CRASHUP_SCHEMAS_VENV", REPO / ".venv-schemas"))
BASE_PYTHON = "/usr/bin/python3"
STAMP_NAME = ".crashup-schemas-stamp"
LOCK_NAME = ".crashup-schemas-lock"
CACHE_DIR = "sqlite-cache"
SERVICES = ("cinder", "glance", "nova")
INSTALL_TIMEOUT = 900.0      # a cold pip cache: ~1-3 min here; the bound only stops a hung index
SYNC_TIMEOUT = 300.0         # nova's migrations on MariaDB take ~20 s; sqlite ~2 s per service


class SchemaError(RuntimeError):
    """One line: what failed and why (no traceback, no password)."""


def _log(msg: str) -> None:
    print(f"schemas: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# the venv
# ----------------------------------------------------------------------------------------------------------------------
def requirements_hash() -> str:
    h = hashlib.sha256()
    for path in (REQUIREMENTS, *CONSTRAINTS):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(BASE_PYTHON.encode())
    return h.hexdigest()


def venv_python(venv: os.PathLike | str | None = None) -> pathlib.Path:
    return pathlib.Path(venv or VENV) / "bin" / "python"


def venv_is_current(venv: os.PathLike | str | None = None) -> bool:
    venv = pathlib.Path(venv or VENV)
    try:
        stamp = (venv / STAMP_NAME).read_text().strip()
    except OSError:
        return False
    return stamp == requirements_hash() and os.access(venv_python(venv), os.X_OK)


def ensure_venv(venv: os.PathLike | str | None = None, *, force: bool = False, quiet: bool = False) -> pathlib.Path:
    """Create or refresh the schemas venv; returns its path.  Idempotent: returns at once when the stamp holds the
    hash of the requirements and constraints.  Concurrent callers serialize on a lock file."""
    venv = pathlib.Path(venv or VENV)
    t0 = time.monotonic()
    say = (lambda m: None) if quiet else _log
    if not force and venv_is_current(venv):
        say(f"schemas venv {venv} up to date ({time.monotonic() - t0:.2f} s)")
        return venv
    venv.mkdir(parents=True, exist_ok=True)
    with open(venv / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and venv_is_current(venv):     # another caller finished it while we waited
            say(f"schemas venv {venv} up to date ({time.monotonic() - t0:.2f} s)")
            return venv
        want = requirements_hash()
        (venv / STAMP_NAME).unlink(missing_ok=True)
        shutil.rmtree(venv / CACHE_DIR, ignore_errors=True)
        py = venv_python(venv)
        if not os.access(py, os.X_OK):
            say(f"creating {venv} with {BASE_PYTHON} -m venv")
            _run([BASE_PYTHON, "-m", "venv", str(venv)], "python -m venv", 120)
        say("pip install nova, cinder, glance, PyMySQL (pinned; a fresh install takes ~1-2 min)")
        t1 = time.monotonic()
        cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
               "-r", str(REQUIREMENTS)]
        for c in CONSTRAINTS:
            cmd += ["-c", str(c)]
        _run(cmd, "pip install", INSTALL_TIMEOUT)
        say(f"pip install done in {time.monotonic() - t1:.1f} s")
        # one process per service: each registers its options on oslo.config's global CONF, and they clash
        for mod in ("cinder.db.migration", "glance.cmd.manage", "nova.db.migration", "pymysql"):
            _run([str(py), "-c", f"import {mod}"], f"import {mod}", 120, env=_env())
        tmp = venv / (STAMP_NAME + ".tmp")
        tmp.write_text(want + "\n")
        os.replace(tmp, venv / STAMP_NAME)
    say(f"schemas venv {venv} ready in {time.monotonic() - t0:.1f} s")
    return venv


def _env() -> dict[str, str]:
    env = dict(os.environ, OS_NOVA_DISABLE_EVENTLET_PATCHING="1", PYTHONWARNINGS="ignore")
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):     # crashup's venv must not leak into the services'
        env.pop(var, None)
    return env


def _run(cmd: Sequence[str], what: str, timeout: float, env: dict | None = None) -> None:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SchemaError(f"schemas venv: {what} did not finish within {timeout:.0f} s") from None
    if p.returncode != 0:
        raise SchemaError(f"schemas venv: {what} failed (exit {p.returncode}): {_last_line(p.stdout)}")


def _last_line(text: str) -> str:
    """The line that says why: the last non-blank, non-indented line (a traceback's exception line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "\t"))]
    return lines[-1][:400] if lines else "(no output)"


# ----------------------------------------------------------------------------------------------------------------------
# schemas
# ----------------------------------------------------------------------------------------------------------------------
def redact(text: str, url: str) -> str:
    """`text` without the password of `url` (raw or URL-quoted)."""
    pw = urllib.parse.urlsplit(url).password
    if pw:
        for form in {pw, urllib.parse.unquote(pw), urllib.parse.quote(pw, safe="")}:
            text = text.replace(form, "***")
    return text


def _safe_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)))


def make_schema(service: str, url: str, *, venv: os.PathLike | str | None = None,
                timeout: float = SYNC_TIMEOUT) -> str:
    """Run `service`'s own migrations (its db sync; nova: the cell database) against the empty database at `url`
    (sqlite:///... or mysql+pymysql://...); returns the migration revision.  SchemaError (one line) on failure.
    The URL goes to the child on stdin: no argv, environment or file holds its password."""
    if service not in SERVICES:
        raise SchemaError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    py = venv_python(venv)
    if not os.access(py, os.X_OK):
        raise SchemaError(f"no schemas venv at {pathlib.Path(venv or VENV)}: run `make schemas-venv`")
    try:
        p = subprocess.run([str(py), str(SYNC)], input=json.dumps({"service": service, "url": url}),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SchemaError(f"{service} db sync on {_safe_url(url)} did not finish within {timeout:.0f} s") from None
    ok = [ln for ln in p.stdout.splitlines() if ln.startswith(f"SCHEMA OK {service} ")]
    if p.returncode != 0 or not ok:
        fail = [ln[len("SCHEMA FAIL "):] for ln in p.stdout.splitlines() if ln.startswith("SCHEMA FAIL ")]
        why = redact(fail[-1][:400] if fail else _last_line(p.stderr + "\n" + p.stdout), url)
        raise SchemaError(f"{service} db sync on {_safe_url(url)} failed (exit {p.returncode}): {why}")
    return ok[-1].split(" ", 3)[3]


def sqlite_schema(service: str, directory: os.PathLike | str, *, name: str | None = None,
                  venv: os.PathLike | str | None = None) -> pathlib.Path:
    """A fresh sqlite database with `service`'s real schema in `directory` (file `name`, default
    <service>.sqlite, overwritten); returns its path.  The migrations run once per venv stamp and version of
    sync.py: later calls copy the cached pristine file."""
    venv = pathlib.Path(venv or VENV)
    if not venv_is_current(venv):
        raise SchemaError(f"schemas venv {venv} missing or out of date: run `make schemas-venv`")
    key = hashlib.sha256(((venv / STAMP_NAME).read_text() + SYNC.read_text()).encode()).hexdigest()[:16]
    cache = venv / CACHE_DIR / key
    if not os.access(venv, os.W_OK):            # someone else's venv (root's, in CI): a per-user cache instead
        cache = pathlib.Path(tempfile.gettempdir()) / f"crashup-schemas-{os.getuid()}" / key
    pristine = cache / f"{service}.sqlite"
    if not pristine.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not pristine.exists():
                fd, tmp = tempfile.mkstemp(prefix=f".{service}-", suffix=".sqlite", dir=cache)
                os.close(fd)
                os.unlink(tmp)          # sqlite creates it; an empty file is a valid empty database too
                try:
                    make_schema(service, f"sqlite:///{tmp}", venv=venv)
                    os.replace(tmp, pristine)
                finally:
                    pathlib.Path(tmp).unlink(missing_ok=True)
    out = pathlib.Path(directory) / (name or f"{service}.sqlite")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pristine, out)
    return out


# ----------------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.schemas", description=__doc__.split("\n")[0])
    p.add_argument("--venv", default=str(VENV))
    p.add_argument("--force", action="store_true", help="reinstall even if the stamp matches")
    p.add_argument("--sqlite", metavar="DIR", help="then write a fresh sqlite schema of each service into DIR")
    a = p.parse_args(argv)
    try:
        ensure_venv(a.venv, force=a.force)
        if a.sqlite:
            for s in SERVICES:
                t0 = time.monotonic()
                path = sqlite_schema(s, a.sqlite, venv=a.venv)
                print(f"{s}: {path} ({time.monotonic() - t0:.2f} s)")
    except SchemaError as e:
        print(f"schemas: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
