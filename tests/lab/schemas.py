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

from tests.lab import venvs

REPO = pathlib.Path(__file__).resolve().parents[2]
BOX_DIR = pathlib.Path(__file__).resolve().parent / "schemabox"
SYNC = BOX_DIR / "sync.py"
REQUIREMENTS = BOX_DIR / "requirements.txt"
CONSTRAINTS = (REPO / "tests" / "lab" / "novabox" / "constraints.txt", BOX_DIR / "constraints.txt")
VENV = pathlib.Path(os.environ.get("CRASHUP_SCHEMAS_VENV", REPO / ".venv-schemas"))
STAMP_NAME = ".crashup-schemas-stamp"
CACHE_DIR = "sqlite-cache"
SERVICES = ("cinder", "glance", "nova")
SYNC_TIMEOUT = 300.0         # nova's migrations on MariaDB take ~20 s; sqlite ~2 s per service


class SchemaError(RuntimeError):
    """One line: what failed and why (no traceback, no password)."""


def _log(msg: str) -> None:
    print(f"schemas: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# the venv
# ----------------------------------------------------------------------------------------------------------------------
VENV_SPEC = venvs.PinnedVenv(
    "schemas venv", VENV, REQUIREMENTS, CONSTRAINTS, STAMP_NAME,
    checks=tuple(f"import {m}" for m in ("cinder.db.migration", "glance.cmd.manage", "nova.db.migration", "pymysql")),
    check_env=(("OS_NOVA_DISABLE_EVENTLET_PATCHING", "1"), ("PYTHONWARNINGS", "ignore")))


def venv_python(venv: os.PathLike | str | None = None) -> pathlib.Path:
    return VENV_SPEC.python(venv)


def venv_is_current(venv: os.PathLike | str | None = None) -> bool:
    return VENV_SPEC.is_current(venv)


def ensure_venv(venv: os.PathLike | str | None = None, *, force: bool = False, quiet: bool = False) -> pathlib.Path:
    """Create or refresh the schemas venv (tests/lab/venvs.py); its sqlite cache goes with a reinstall."""
    try:
        return VENV_SPEC.ensure(venv, force=force, quiet=quiet, say=_log,
                                on_reinstall=lambda v: shutil.rmtree(v / CACHE_DIR, ignore_errors=True))
    except venvs.VenvError as e:
        raise SchemaError(str(e)) from None


def _env() -> dict[str, str]:
    return VENV_SPEC.env()


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
        why = redact(fail[-1][:400] if fail else venvs.last_line(p.stderr + "\n" + p.stdout), url)
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
