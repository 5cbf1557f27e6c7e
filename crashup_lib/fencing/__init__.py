"""A framework for fence agents that follows the fence-agents contract exactly (see fence-agents' fencing.py).

Input: options as `key=value` lines on stdin when there are no arguments (how Pacemaker's fencer calls), else the
command line; `#` lines skipped, quotes stripped, `-`/`_` interchangeable, old names (ipaddr, login, passwd, port)
accepted, unknown keys warned about and ignored, `nodename`/`nodeid` taken silently. Actions: on, off, reboot
(default), status, monitor, list, list-status, metadata, validate-all. Exit codes: 0 success; status 0 ON, 2 OFF;
every failure 1 with one "Failed: ..." line on stderr (Pacemaker classes "Timed out" as a timeout).

Input is untrusted: stdin is read as bytes, bounded in size and time; every value must be UTF-8 text without control
characters and every number finite and within its option's bounds; a value quoted in a message is shortened and
escaped (log.shown), and anything unforeseen still ends as the one Failed line, never a traceback.

Unlike fencing.py, timeouts always hold (fencing.py drops them all under Pacemaker), every action runs under a hard
deadline, and a password is never needed on the command line: stdin, a file or a script supply it, and it is
redacted from every log line and message.

An agent subclasses FenceAgent. A power agent implements get_power/set_power and inherits the generic on/off/reboot
semantics (read state first, act, confirm by reading back); an agent whose "off" is not a power change (e.g. marking
a nova service down) overrides the actions it needs.
"""
from crashup_lib.fencing.agent import FenceAgent
from crashup_lib.fencing.options import (ACTIONS, COMMON_OPTIONS, CREDENTIAL_OPTIONS, DEVICE_ACTIONS, EC_FAILED, EC_OK,
                                         EC_STATUS_OFF, MAX_WARNINGS, MAXIMUM, FenceError, FenceTimeout, Option,
                                         Request, success)

__all__ = ["ACTIONS", "COMMON_OPTIONS", "CREDENTIAL_OPTIONS", "DEVICE_ACTIONS", "EC_FAILED", "EC_OK", "EC_STATUS_OFF",
           "MAX_WARNINGS", "MAXIMUM", "FenceAgent", "FenceError", "FenceTimeout", "Option", "Request", "success"]
