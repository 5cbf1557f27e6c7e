"""The Collector: asks a resource's route of backends, combines their answers, retries unknown ones.

A route (`Collector(routes=...)`, by (service, kind) or service) lists host backends then resource backends; the
answers are combined by `combine()`: any host_down wins (and the later backends are not asked: a powered-off host's
libvirt would only time out), else the first resource-level answer that is not unknown, else unknown. Every call is
bounded in time (bound.py).

Retries: an unknown answer is asked again `recovery_resync_count` times, `recovery_resync_interval` seconds apart,
before it is accepted (`Observation.settled`); then the service applies the rules' unknown outcome. When the
nearest open deadline leaves no room for the next try the collector stops early and answers unknown with
settled=False: the service must not act on it (the rules apply unknown only after every try), it asks again at
the next sweep. The sleep function is injectable (tests are instant).

Errors never escape a backend call as tracebacks: any exception becomes an unknown answer whose `detail` is one
line (secrets redacted). DeadlineExceeded (a BaseException) is the caller's and passes through.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

from crashup_lib import deadline
from crashup_lib.health.bound import Bounded, time_left
from crashup_lib.health.model import HOST, HOST_LEVEL, RESOURCE, Backend, HealthError, Observation, Resource
from crashup_lib.health.realities import combine
from crashup_lib.rules import HOST_DOWN, UNKNOWN, kind_of


class Collector:
    """Asks each resource's route of backends, retrying unknown answers (see the module's docstring).

    routes: {(service, kind) or service: [backends, host-level first]}.
    """

    def __init__(self, routes: Mapping[tuple[str, str] | str, Sequence[Backend]], *, resync_count: int = 3,
                 resync_interval: float = 10.0, sleep: Callable[[float], None] = time.sleep):
        self.routes = {k: tuple(v) for k, v in routes.items()}
        self.resync_count, self.resync_interval, self.sleep = resync_count, resync_interval, sleep
        self._bounded = Bounded()

    @classmethod
    def from_config(cls, cfg, routes, **kw) -> "Collector":
        return cls(routes, resync_count=cfg.recovery_resync_count, resync_interval=cfg.recovery_resync_interval,
                   **kw)

    def route(self, resource: Resource) -> tuple[Backend, ...]:
        found = self.routes.get((resource.service, resource.kind)) or self.routes.get(resource.service)
        if not found:
            raise HealthError(f"health: no backend for {resource.service} {resource.kind}")
        return found

    def observe(self, resource: Resource) -> Observation:
        """The reality, after up to 1 + resync_count tries while it is unknown."""
        backends = self.route(resource)
        tries = 0
        while True:
            tries += 1
            seen = self.observe_once(resource, backends)
            if seen.reality != UNKNOWN or tries > self.resync_count:
                return dataclasses.replace(seen, tries=tries)
            left = deadline.remaining()
            if left is not None and left < self.resync_interval + min(b.timeout for b in backends):
                return dataclasses.replace(seen, tries=tries, settled=False,
                                           detail=f"{seen.detail}; no time left for try {tries + 1}")
            self.sleep(self.resync_interval)

    def observe_once(self, resource: Resource, backends: Sequence[Backend] | None = None) -> Observation:
        """One pass over the route, no retry."""
        answers: list[tuple[str, str]] = []
        seen: list[Observation] = []
        for backend in backends or self.route(resource):
            obs = self._ask(backend, resource)
            answers.append((backend.level, obs.reality))
            seen.append(obs)
            if backend.level == HOST and obs.reality == HOST_DOWN:
                break                                    # nothing behind a down host answers
        reality = combine(answers)
        if reality == HOST_DOWN:
            why = next(o for (level, a), o in zip(answers, seen) if level == HOST and a == HOST_DOWN)
        else:
            why = next((o for (level, a), o in zip(answers, seen) if level == RESOURCE and a == reality), None)
        if why is None:                                   # unknown: every answer says why
            return Observation(UNKNOWN, "; ".join(f"{o.source or '?'}: {o.detail}" for o in seen),
                               ", ".join(o.source for o in seen if o.source))
        return Observation(reality, why.detail, why.source)

    def _ask(self, backend: Backend, resource: Resource) -> Observation:
        timeout = time_left(backend.timeout)
        key = f"{backend.name}:{resource.host or ''}" if backend.level == HOST or resource.host else \
            f"{backend.name}:{resource.id}"
        obs = self._bounded(key, lambda: backend.observe(resource), timeout, f"{backend.name} about {resource}",
                            inline=getattr(backend, "bounds_itself", False))
        if not obs.source:
            obs = dataclasses.replace(obs, source=backend.name)
        allowed = HOST_LEVEL if backend.level == HOST else kind_of(resource.service, resource.kind).reality_names
        if obs.reality not in allowed:
            return Observation(UNKNOWN, f"{backend.name} answered {obs.reality!r}, not one of {', '.join(allowed)}",
                               obs.source)
        return obs
