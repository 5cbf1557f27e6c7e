"""A throwaway MariaDB server for tests and benchmarks: Debian's mariadb-server binaries, no systemd, no /etc.

Standard library only.  The server gets its own data directory under /tmp, listens on a free loopback port and a
socket in that directory, and is removed whole by stop().  Works as root (--user=root).

    with MariaDB() as db:                    # or db = MariaDB(); db.start(); ...; db.stop()
        url = db.create_database("nova")     # mysql+pymysql://crashup:<password>@127.0.0.1:<port>/nova

The password is random per server and never printed (repr() and errors show ***).
"""
from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

USER = "crashup"
SEARCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_DB_TIMEOUT = 120.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CLIENT_TIMEOUT = 30.0


class MariaDBError(RuntimeError):
    """One line: what failed and why."""


def available() -> str | None:
    """None when the server binaries are installed, else why not (a skip reason)."""
    missing = [b for b in ("mariadb-install-db", "mariadbd", "mariadb", "mariadb-admin") if not _which(b)]
    return f"MariaDB not installed (missing {', '.join(missing)}; Debian package mariadb-server)" if missing else None


def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH + ":" + os.environ.get("PATH", ""))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: pathlib.Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no error log)"
    useful = [ln.strip() for ln in text.splitlines() if "[ERROR]" in ln] or [ln.strip() for ln in text.splitlines()]
    return " | ".join(useful[-lines:]) or "(error log empty)"


class MariaDB:
    """One mariadbd process with a user `crashup` that may do anything on 127.0.0.1."""

    def __init__(self, *, buffer_pool: str = "256M", base_dir: str = "/tmp"):
        self.buffer_pool = buffer_pool
        self.base_dir = base_dir
        self.datadir: pathlib.Path | None = None
        self.socket_path: pathlib.Path | None = None
        self.port = 0
        self.password = secrets.token_hex(16)      # hex: nothing to quote in a URL or an alembic .ini
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def __repr__(self) -> str:
        return f"MariaDB(port={self.port}, datadir={self.datadir}, user={USER}, password=***)"

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> "MariaDB":
        why = available()
        if why:
            raise MariaDBError(why)
        t0 = time.monotonic()
        root = pathlib.Path(tempfile.mkdtemp(prefix="crashup-mariadb-", dir=self.base_dir))
        self.datadir = root / "data"
        self.socket_path = root / "mysqld.sock"
        try:
            self._install_db()
            for attempt in range(3):              # the free port may be taken between the probe and the bind
                self.port = _free_port()
                if self._launch():
                    break
            else:
                raise MariaDBError(f"mariadbd could not bind a loopback port: {_tail(self._errlog)}")
            # install-db leaves root without a password on 127.0.0.1, ::1 and the host name: any local user could
            # reach those over TCP; root keeps the socket (in a 0700 directory), the tests get a password
            hosts = [r[0] for r in self.query("SELECT host FROM mysql.user WHERE user = 'root' "
                                              "AND host <> 'localhost';")]
            self._client("".join(f"DROP USER 'root'@'{h}';\n" for h in hosts if "'" not in h) +
                         f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{self.password}';\n"
                         f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;\n")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    @property
    def _errlog(self) -> pathlib.Path:
        return self.datadir.parent / "error.log"

    def _install_db(self) -> None:
        cmd = [_which("mariadb-install-db"), "--no-defaults", f"--datadir={self.datadir}", "--user=root",
               "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve"]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=INSTALL_DB_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise MariaDBError(f"mariadb-install-db did not finish within {INSTALL_DB_TIMEOUT:.0f} s") from None
        if p.returncode != 0:
            last = [ln for ln in p.stdout.splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise MariaDBError(f"mariadb-install-db failed (exit {p.returncode}): {last[0].strip()}")

    def _launch(self) -> bool:
        """Start mariadbd and wait until it answers; False if the port was taken, MariaDBError otherwise."""
        self._errlog.unlink(missing_ok=True)
        cmd = [_which("mariadbd"), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket_path}",
               f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-name-resolve",
               f"--pid-file={self.datadir.parent / 'mysqld.pid'}", f"--log-error={self._errlog}",
               f"--innodb-buffer-pool-size={self.buffer_pool}",
               # a test server: durability per transaction buys nothing and costs the migrations most of their time
               "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0", "--skip-log-bin",
               "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self._errlog.read_text(errors="replace") if self._errlog.exists() else ""
                self.proc = None
                if "Address already in use" in log or "Do you already have another server running" in log:
                    return False
                raise MariaDBError(f"mariadbd exited during start-up: {_tail(self._errlog)}")
            if self.socket_path.exists() and self._ping():
                return True
            time.sleep(0.1)
        raise MariaDBError(f"mariadbd not ready after {START_TIMEOUT:.0f} s: {_tail(self._errlog)}")

    def _ping(self) -> bool:
        try:
            return subprocess.run([_which("mariadb-admin"), "--no-defaults",
                                   f"--socket={self.socket_path}", "--user=root", "ping"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """SIGTERM, SIGKILL after STOP_TIMEOUT; then remove the data directory.  Safe to call twice."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(5)
            self.proc = None
        if self.datadir is not None:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)
            self.datadir = None

    def __enter__(self) -> "MariaDB":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- use -------------------------------------------------------------------------------------------------------
    def _client(self, sql: str) -> str:
        """Run SQL as root over the socket (stdin: no statement shows in argv); returns stdout."""
        if self.proc is None:
            raise MariaDBError("MariaDB not started")
        try:
            p = subprocess.run([_which("mariadb"), "--no-defaults", f"--socket={self.socket_path}", "--user=root",
                                "--batch", "--skip-column-names"], input=sql, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise MariaDBError(f"mariadb client did not finish within {CLIENT_TIMEOUT:.0f} s") from None
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["(no output)"])[-1].replace(self.password, "***")
            raise MariaDBError(f"mariadb client failed (exit {p.returncode}): {err}")
        return p.stdout

    def url(self, database: str = "") -> str:
        """The SQLAlchemy URL (PyMySQL) of `database` for user crashup, password included: do not print it."""
        return f"mysql+pymysql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (utf8mb4, as the services' deployments use); returns its URL."""
        if not name.replace("_", "").isalnum():
            raise MariaDBError(f"bad database name {name!r}")
        self._client(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;\n")
        return self.url(name)

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a query run as root (tab-separated batch output split into fields)."""
        return [ln.split("\t") for ln in self._client(sql).splitlines()]


def _main() -> int:
    """Smoke test: start, create a database, stop (python -m tests.lab.mariadb)."""
    import sys
    t0 = time.monotonic()
    try:
        with MariaDB() as db:
            db.create_database("smoke")
            version = db.query("SELECT VERSION();")[0][0]
            print(f"MariaDB {version} on 127.0.0.1:{db.port} ready in {db.start_seconds:.2f} s")
    except MariaDBError as e:
        print(f"mariadb: {e}", file=sys.stderr)
        return 1
    print(f"started and removed in {time.monotonic() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
