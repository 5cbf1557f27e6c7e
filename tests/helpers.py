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

