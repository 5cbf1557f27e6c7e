"""What host recovery asks cinder around the evacuations, bounded so that volumes never hold the evacuations up.

Before: gather() reads, for every server of the failed host, its attachment records and its volumes (the plan lists
them; repair.decide_volume() repairs one left attaching/detaching by the fenced host), all servers concurrently,
within GATHER_BUDGET seconds as a whole: a server cinder did not answer for in time is "not known" (the plan shows
?), its evacuation goes ahead. The first sign that cinder is unreachable stops the reads not yet started.
After: check_moved() reads each volume of an evacuated server until cinder shows it attached to the server on its
new host and not on the failed one (nova's rebuild makes a new attachment, then deletes the old), for at most
SETTLE seconds; the pipeline runs the checks beside its evacuations (their own threads), never in their way.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from typing import Iterable

from crashup_lib import log
from crashup_lib.cinder import Attachment, CinderError, Volume

LOG = log.get("storage")
GATHER_BUDGET = 5.0          # seconds for reading every server's volumes before the evacuations (~20 ms a server)
SETTLE = 10.0                # seconds an evacuated server's volumes get to show on the new host
SETTLE_POLL = 1.0


@dataclasses.dataclass(frozen=True)
class ServerVolumes:
    """One server's volumes as cinder has them: its attachment records (any status) and each volume they name."""
    server_id: str
    records: tuple[Attachment, ...]
    volumes: tuple[Volume, ...]

    @property
    def volume_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([r.volume_id for r in self.records if r.volume_id] +
                                   [v.id for v in self.volumes]))


@dataclasses.dataclass(frozen=True)
class VolumeState:
    """One volume of an evacuated server after the evacuation, as cinder shows it."""
    id: str
    moved: bool | None           # attached to the server on the new host and not on the failed one; None: unknown
    hosts: tuple[str, ...]       # the hosts cinder shows it attached to the server on
    status: str                  # cinder's volume status ("" when unknown, "gone" when deleted)

    def to_dict(self) -> dict:
        return {"id": self.id, "moved": self.moved, "hosts": list(self.hosts), "status": self.status}


def _unreachable(e: CinderError) -> bool:
    """A failure that will repeat for every call (no answer, no endpoint, refused credentials), not one volume's."""
    return e.unavailable or e.status in (None, 401, 403)


def _read(cinder, server_id: str, broken: threading.Event) -> ServerVolumes | None:
    if broken.is_set():
        return None
    try:
        records = tuple(cinder.attachments(server_id))
        volumes = []
        for volume_id in dict.fromkeys(r.volume_id for r in records if r.volume_id):
            volume = cinder.volume(volume_id)
            if volume is not None:
                volumes.append(volume)
        return ServerVolumes(server_id, records, tuple(volumes))
    except CinderError as e:
        if _unreachable(e) and not broken.is_set():
            broken.set()
            LOG.warning("volumes not read, evacuations go ahead without: %s", e)
        elif not _unreachable(e):
            LOG.warning("%s", e)
        return None
    except Exception as e:               # noqa: BLE001 - volumes are worth a warning, never a stopped recovery
        LOG.warning("reading the volumes of %s failed: %s: %s", server_id, type(e).__name__, e)
        return None


def gather(cinder, server_ids: Iterable[str], *, concurrency: int = 8,
           budget: float | None = None) -> dict[str, ServerVolumes]:
    """server id -> its ServerVolumes, for the servers cinder answered about within `budget` seconds."""
    budget = GATHER_BUDGET if budget is None else budget
    ids = list(dict.fromkeys(server_ids))
    if cinder is None or not ids:
        return {}
    broken = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max(1, min(concurrency, len(ids))), thread_name_prefix="volumes")
    try:
        futures = {pool.submit(_read, cinder, sid, broken): sid for sid in ids}
        done, late = concurrent.futures.wait(futures, timeout=budget)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)     # a read still running ends within cinder's timeout
    if late:
        broken.set()
        LOG.warning("the volumes of %d servers not read from cinder within %gs: their evacuations go ahead without",
                    len(late), budget)
    return {futures[f]: f.result() for f in done if f.result() is not None}


def state_of(volume: Volume | None, volume_id: str, server_id: str, source: str, target: str) -> VolumeState:
    """Whether `volume` (None: deleted) has followed its server from `source` to `target`."""
    if volume is None:
        return VolumeState(volume_id, False, (), "gone")
    hosts = tuple(dict.fromkeys(a.host_name or "?" for a in volume.attached_to(server_id)))
    return VolumeState(volume_id, target in hosts and source not in hosts, hosts, volume.status)


def check_moved(cinder, server_id: str, volume_ids: Iterable[str] | None, source: str, target: str, *,
                settle: float | None = None, poll: float | None = None, sleep=time.sleep) -> list[VolumeState]:
    """Each volume of the server once it has moved, or as it still is after `settle` seconds (moved False), or
    moved None when cinder cannot tell. volume_ids None (not known before): the volumes cinder attaches now."""
    settle, poll = SETTLE if settle is None else settle, SETTLE_POLL if poll is None else poll
    deadline = time.monotonic() + settle
    try:
        ids = list(dict.fromkeys(volume_ids)) if volume_ids is not None else \
            [v.id for v in cinder.volumes_of(server_id)]
    except CinderError as e:
        LOG.warning("the volumes of %s not checked: %s", server_id, e)
        return []
    found: dict[str, VolumeState] = {}
    while True:
        for volume_id in ids:
            if found.get(volume_id) is not None and found[volume_id].moved:
                continue
            try:
                found[volume_id] = state_of(cinder.volume(volume_id), volume_id, server_id, source, target)
            except CinderError as e:
                LOG.warning("%s", e)
                found[volume_id] = VolumeState(volume_id, None, (), "")
                if _unreachable(e):
                    return [found.get(v) or VolumeState(v, None, (), "") for v in ids]
        if all(s.moved for s in found.values()) or time.monotonic() + poll > deadline:
            return [found[v] for v in ids]
        sleep(poll)
