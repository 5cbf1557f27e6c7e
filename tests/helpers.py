"""Shared helpers: run agents as Pacemaker does (a fresh process, options in the environment or on stdin)."""
import dataclasses
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TEST_AGENTS = REPO / "tests" / "agents"


def agent_env(**extra: str) -> dict[str, str]:
    """A clean environment whose python3 is the one running the tests (the agents' shebang is env python3)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OCF_", "HA_", "CRASHUP_", "PCMK_"))}
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 60.0, interval: float = 0.3):
    """Poll `check` until it returns something true; fail naming `what` and the last answer."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def standalone_nova_box(tmp_path_factory, name: str, hosts, report_interval: int, service_down_time: int):
    """A real nova box of its own on 127.0.0.1 free ports (tests that need nova but not the whole lab)."""
    from tests.lab import nova_env
    nova_env.ensure_nova_venv()
    d = tmp_path_factory.mktemp(name)
    box = nova_env.NovaBox()
    box.start("127.0.0.1", free_port(), free_port(), hosts, d / "state", d / "nova.log", timeout=120,
              report_interval=report_interval, service_down_time=service_down_time, exit_with_parent=True)
    return box


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def run(argv, *, env=None, input=None, timeout=60) -> Result:
    start = time.monotonic()
    done = subprocess.run([str(a) for a in argv], env=env or agent_env(), input=input, capture_output=True,
                          text=True, timeout=timeout)
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - start)



class BmcSim:
    """A BMC simulator process (tests/lab/bmc.py) on a free loopback UDP port, for fence-agent tests."""

    def __init__(self, state_dir: pathlib.Path, password: str = "bmc-Pa55w0rd", name: str = "sim"):
        self.dir = state_dir
        self.password = password
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "password").write_text(password)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.bmc", "--name", name, "--address", "127.0.0.1", "--port", "0",
             "--user", "admin", "--password-file", str(self.dir / "password"), "--state-dir", str(self.dir)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().split()        # "ready NAME ADDRESS PORT" once the socket is bound
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError(f"BMC simulator did not start: {line}")
        self.port = int(line[3])

    def fault(self, text: str = "") -> None:
        (self.dir / "fault").write_text(text)

    def power_log(self) -> list[dict]:
        import json
        path = self.dir / "power.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
