"""Run a Plan against nova: evacuate, wave by wave, with bounded concurrency, and follow each instance to the end.

Idempotent and resumable without a ledger of its own: nova's evacuation migrations and each instance's host are
the ledger. An instance no longer on the failed host has moved; one with an evacuation migration from the failed
host since its fencing is in flight and is only followed; only the rest get an evacuate call. A resumed run (a new
daemon after a failover) therefore never evacuates an instance twice for one failure.

Nothing is read per instance before the evacuate calls (the plan comes from a fresh listing of the failed host, the
in-flight check from one migrations call). Following is one loop for all instances of a wave: one migrations call per
round, and a server read only for the instances whose migration has ended, so 50 evacuations cost a handful of
requests a second, not 50: nova's own capacity goes to the evacuations.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import enum
import time
from typing import TYPE_CHECKING, Callable

from crashup_lib import log
from crashup_lib import nova as nova_api
from crashup_lib.pacemaker import NoQuorum

if TYPE_CHECKING:
    from crashup_lib.plan import EvacuationStep

LOG = log.get("evacuate")
FINAL_MIGRATION = {"done", "completed", "failed", "error", "cancelled"}
FAILED_MIGRATION = {"failed", "error", "cancelled"}
ATTEMPTS = 3
DELETED_REASON = "deleted by its owner during the recovery"


class Result(enum.Enum):
    """How one instance's evacuation ended."""
    EVACUATED = "evacuated"          # on a new host, in its final power state
    DELETED = "deleted"              # nova no longer knows it (its owner deleted it meanwhile): nothing to recover
    FAILED = "failed"                # given up: see Outcome.reason


@dataclasses.dataclass(frozen=True)
class Outcome:
    server_id: str
    name: str
    result: Result
    target_host: str | None
    duration_s: float
    attempts: int
    reason: str = ""
    power_state: int | None = None   # nova's code on the new host (1 running, 4 shutdown)


@dataclasses.dataclass
class _Track:
    step: EvacuationStep
    started: float
    attempts: int = 0
    target: str | None = None
    after_sent: bool = False


def _in_flight(migrations, server_id: str, source: str, since: float) -> bool:
    return any(m.server_id == server_id and m.source_compute == source and m.status not in FAILED_MIGRATION
               and _ts(m.created_at) >= since for m in migrations)


def _ts(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


class Evacuator:
    def __init__(self, nova, *, source_host: str, fenced_at: float, microversion: str | None = None,
                 concurrency: int = 8, instance_timeout: float = 300, poll_interval: float = 0.5,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 may_act: Callable[[], bool] = lambda: True):
        self.nova = nova
        self.source = source_host
        # nova keeps whole seconds; a migration made by this recovery cannot predate the fencing record
        self.since = int(fenced_at) - 1
        self.microversion = microversion
        self.concurrency = concurrency
        self.instance_timeout = instance_timeout
        self.poll_interval = poll_interval
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.may_act = may_act            # asked before each evacuate call: the cluster's quorum

    def run(self, waves) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for wave in waves:
            outcomes += self._run_wave(list(wave.steps))
        return outcomes

    # --- one wave ------------------------------------------------------------------------------------------------
    def _run_wave(self, steps) -> list[Outcome]:
        done: list[Outcome] = []
        tracks: dict[str, _Track] = {}
        migrations = self.nova.migrations(source_compute=self.source, migration_type="evacuation")
        to_start = []
        for step in steps:
            # The plan was made from a fresh listing of the failed host: instances already moved are not in it.
            # What may be in flight is in the migrations list, so nothing is read per instance before the calls.
            track = _Track(step, time.monotonic())
            tracks[step.server_id] = track
            if _in_flight(migrations, step.server_id, self.source, self.since):
                LOG.info("%s: evacuation already in flight, following it", step.name)
            else:
                to_start.append(track)
        issuing = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            for track, ended in zip(to_start, pool.map(self._evacuate, to_start)):
                if ended is not None:
                    result, reason = ended
                    done.append(self._finish(track, result, None, reason))
                    tracks.pop(track.step.server_id, None)
        LOG.info("%d evacuate calls issued in %.2fs (%d at a time)", len(to_start), time.monotonic() - issuing,
                 self.concurrency)
        while tracks:
            time.sleep(self.poll_interval)
            try:
                migrations = self.nova.migrations(source_compute=self.source, migration_type="evacuation")
            except nova_api.NovaError as e:
                LOG.warning("reading evacuation migrations failed: %s; retrying", e)
                continue
            latest = {}
            for m in migrations:
                if _ts(m.created_at) >= self.since:
                    previous = latest.get(m.server_id)
                    if previous is None or _ts(m.created_at) >= _ts(previous.created_at):
                        latest[m.server_id] = m
            for server_id, track in list(tracks.items()):
                outcome = self._follow(track, latest.get(server_id))
                if outcome is not None:
                    done.append(outcome)
                    del tracks[server_id]
        return done

    def _evacuate(self, track: _Track) -> tuple[Result, str] | None:
        """Ask nova to evacuate; retried without a target host on 409/5xx. None when nova accepted it, else how it
        ended (DELETED or FAILED) and why."""
        target = track.step.target
        last = ""
        while track.attempts < ATTEMPTS:
            if not self.may_act():             # cut off from the majority meanwhile: its daemon goes on instead
                raise NoQuorum(f"no quorum: not evacuating {track.step.server_id} from a partition cut off from "
                               "the majority")
            track.attempts += 1
            try:
                self.nova.evacuate(track.step.server_id, target_host=target, microversion=self.microversion)
                track.target = target
                return None
            except nova_api.NovaNotFound:
                return Result.DELETED, DELETED_REASON
            except (nova_api.NovaConflict, nova_api.NovaUnavailable) as e:
                last = str(e)
                LOG.warning("%s: evacuate attempt %d failed: %s", track.step.name, track.attempts, e)
                target = None                      # let the scheduler choose next time
                time.sleep(min(2.0, 0.5 * track.attempts))
            except nova_api.NovaError as e:
                return Result.FAILED, str(e)
        return Result.FAILED, f"gave up after {track.attempts} attempts: {last}"

    def _follow(self, track: _Track, migration) -> Outcome | None:
        step = track.step
        if time.monotonic() - track.started > self.instance_timeout:
            return self._finish(track, Result.FAILED, None, f"not finished within {self.instance_timeout:g}s")
        if migration is None or migration.status not in FINAL_MIGRATION:
            return None
        try:
            server = self.nova.server(step.server_id)
        except nova_api.NovaNotFound:
            return self._finish(track, Result.DELETED, None, DELETED_REASON)
        except nova_api.NovaError as e:
            LOG.warning("%s: reading the server failed: %s", step.name, e)
            return None
        if migration.status in FAILED_MIGRATION or server.status == "ERROR":
            if track.attempts < ATTEMPTS and server.host == self.source:
                LOG.warning("%s: evacuation %s (%s); evacuating again without a target", step.name,
                            migration.status, server.status)
                ended = self._evacuate(track)
                if ended is None:
                    return None
                result, reason = ended
                return self._finish(track, result, None, reason)
            return self._finish(track, Result.FAILED, server.host, f"evacuation {migration.status}, server "
                                                                   f"{server.status}")
        if server.host == self.source or server.task_state:
            return None                            # nova still finishing the rebuild
        after = step.after
        if (after, server.status) in (("start", "SHUTOFF"), ("stop", "ACTIVE")):
            # nova left it in the other power state than it had: put it back (keep_power_state)
            if not track.after_sent:
                try:
                    (self.nova.start if after == "start" else self.nova.stop)(step.server_id)
                    track.after_sent = True
                except nova_api.NovaError as e:
                    return self._finish(track, Result.FAILED, server.host, f"evacuated but {after} failed: {e}")
            return None
        if server.status in ("ACTIVE", "SHUTOFF"):
            return self._finish(track, Result.EVACUATED, server.host, "", server.power_state)
        return None

    def _finish(self, track: _Track, result: Result, host: str | None, reason: str,
                power_state: int | None = None) -> Outcome:
        outcome = Outcome(track.step.server_id, track.step.name, result, host,
                          round(time.monotonic() - track.started, 2), track.attempts, reason, power_state)
        (LOG.info if result is not Result.FAILED else LOG.warning)("%s: %s%s%s", outcome.name, result.value,
                                                                   f" to {host}" if host else "",
                                                                   f" ({reason})" if reason else "")
        self.on_outcome(outcome)
        return outcome
