"""The guard's health test: does a quorate cluster answer through this node's pacemaker_remote connection?

`crm_node --quorum` on a remote node is answered by the controller through remoted's IPC proxy, so a cut link makes
it fail or time out (unlike a TCP socket, which stays ESTABLISHED on a silent cut). It prints 1 (quorate) or 0; any
other outcome, including no answer within the probe timeout (its process group is then killed), is no answer.
"""
from __future__ import annotations

import time

from crashup_lib import log, proc
from crashup_lib.isolation.decide import Answer

LOG = log.get("isolation")
COMMAND = ("crm_node", "--quorum")


def quorum(timeout: float, argv: tuple[str, ...] = COMMAND) -> tuple[Answer, str]:
    """The cluster's answer within `timeout` seconds, and why when there is none (one line)."""
    try:
        done = proc.run(list(argv), timeout, limit=4096)
    except proc.ProcError as e:
        return Answer.NO_ANSWER, str(e)
    said = done.stdout.strip()
    if done.returncode == 0 and said == "1":
        return Answer.QUORATE, ""
    if done.returncode == 0 and said == "0":
        return Answer.INQUORATE, "the cluster has no quorum"
    return Answer.NO_ANSWER, f"{argv[0]} exit {done.returncode}" + (f": {done.last_line()}" if done.last_line() else "")


def timed(timeout: float, argv: tuple[str, ...] = COMMAND, clock=time.monotonic) -> tuple[Answer, str, float, float]:
    """quorum() with when it started and when it answered (the state machine measures from the start), on the
    guard's clock: monotonic, so that a wall clock stepped back cannot delay isolation."""
    started = clock()
    answer, why = quorum(timeout, argv)
    return answer, why, started, clock()
