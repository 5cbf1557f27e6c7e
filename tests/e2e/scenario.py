"""What end-to-end scenarios share: booting servers on a host, waiting for a recovery request, reading the event
journal and nova's evacuation records, switching the recovery daemon off or its mode; on the notification bus, a
consumer of the lab's broker (BusTap) and a watch that no server is ever on two hypervisors (GuestWatch)."""
import contextlib
import os
import threading
import time

import pytest

from crashup_lib import events
from tests.lab.nova_env import IMAGE_ID


class Sampler:
    """sample() every `every` seconds in a thread, between __enter__ and __exit__."""
    every = 0.3

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)


def own_lab(nodes: int, what: str, **shape):
    """A module's own lab (its `lab` fixture: `yield from own_lab(...)`): any lab left up is brought down first, this
    one (`tests.lab.lab.up(nodes, **shape)`) is brought up, its time printed, and down again after the module."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, Pacemaker, libvirtd)")
    from tests.lab import lab as lab_module
    if lab_module.read_state():
        lab_module.down(quiet=True)
    t = lab_module.up(nodes, quiet=True, **shape)
    print(f"\nlab up {what} --nodes {nodes}: {t.total:.1f}s; "
          + ", ".join(f"{p} +{s:.1f}s" for p, s in t.phases if "libvirtd" in p or "guest image" in p))
    yield lab_module
    lab_module.down(quiet=True)


def set_daemon(enabled: bool, check: bool = True):
    """The recovery daemon's resource enabled or disabled (in a live controller when the lab has several)."""
    from tests.lab import pacemaker
    pacemaker.tool(["pcs", "resource", "enable" if enabled else "disable", "crashup", "--wait=60"], check=check,
                   timeout=90)


@contextlib.contextmanager
def daemon_stopped():
    """No recovery daemon inside the block: recovery requests can only wait."""
    set_daemon(False)
    try:
        yield
    finally:
        set_daemon(True)


def boot(lab, host, count, prefix):
    """Boot `count` servers on `host`. A build the scheduler refused because a just-rejoined host's first heartbeat
    had not reached it yet is tried again once (test set-up, not what is tested)."""
    import openstack.exceptions
    conn = lab.connection()

    def create(i):
        return conn.compute.create_server(name=f"{prefix}-{i}", flavor_id="1", image_id=IMAGE_ID, networks="none",
                                          host=host)
    servers = [create(i) for i in range(count)]
    ids = []
    for i, s in enumerate(servers):
        try:
            conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=180)
        except openstack.exceptions.ResourceFailure:
            conn.compute.delete_server(s)
            time.sleep(3)
            s = create(i)
            conn.compute.wait_for_server(s, status="ACTIVE", interval=0.3, wait=180)
        ids.append(s.id)
    return ids


def wait_request(lab, node, states, since=0.0, timeout=180):
    """The node's recovery request once it is in one of `states`, recorded by a fencing after `since`."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        req = lab.recovery_request(node)
        if req is not None and req.state in states and req.fenced_at >= since:
            return req
        time.sleep(0.5)
    raise AssertionError(f"{node.name}: recovery request not {states} after {timeout}s: {lab.recovery_request(node)}")


def journal(lab, since=0.0):
    return [e for e in events.read(str(lab.JOURNAL)) if _epoch(e["time"]) >= since]


def _epoch(text):
    import datetime
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def evacuations(lab, server_ids):
    conn = lab.connection()
    found = {sid: [] for sid in server_ids}
    for m in conn.compute.migrations(migration_type="evacuation"):
        if m.server_id in found:
            found[m.server_id].append(m)
    return found




def assert_recovered_exactly_once(lab, node, server_ids):
    """Every server ACTIVE off the failed node, evacuated once (nova's migration records), on one hypervisor."""
    conn = lab.connection()
    by_id = {s.id: s for s in conn.compute.servers(all_projects=True)}
    for sid in server_ids:
        server = by_id[sid]
        assert server.compute_host != node.nova_host and server.status == "ACTIVE", (server.name, server.status)
    for sid, migrations in evacuations(lab, server_ids).items():
        # never evacuated twice: one evacuation that did not fail (a failed one nova rolled back may precede it)
        kept = [(m.source_compute, m.status) for m in migrations if m.status not in ("failed", "error")]
        assert kept in ([(node.nova_host, "done")], [(node.nova_host, "completed")]), \
            (sid, [(m.source_compute, m.status, m.created_at) for m in migrations])
    guests = lab.nova().guests()
    for sid in server_ids:                                  # no VM runs on two hypervisors
        assert sum(sid in ids for ids in guests.values()) == 1, (sid, guests)


def delete_servers(lab):
    """Every server deleted, and gone."""
    conn = lab.connection()
    servers = list(conn.compute.servers(all_projects=True))
    for s in servers:
        conn.compute.delete_server(s)
    for s in servers:
        conn.compute.wait_for_delete(s, interval=0.3, wait=120)


def tidy_up(lab):
    """After each e2e test that fails nodes: faults cleared, daemon enabled, every recovery closed (released if it
    does not end by itself), every node back, no servers."""
    from crashup_lib.recovery import pipeline
    from tests.lab import pacemaker
    lab.nova().clear_faults()
    set_daemon(True, check=False)
    for node in lab.nodes():
        req = lab.recovery_request(node)
        if req is not None and req.open:
            try:
                wait_request(lab, node, ("done", "released"), req.fenced_at, timeout=120)
            except AssertionError:
                pipeline.release(node.name)
        lab.wait_rejoined(node)
    pacemaker.wait_for(lab.all_online(lab.nodes()), 120, "every node online")
    delete_servers(lab)


def restart_daemon():
    from tests.lab import pacemaker
    pacemaker.tool(["crm_resource", "--restart", "--resource", "crashup", "--timeout", "60s"], timeout=90)


@contextlib.contextmanager
def recovery_mode(lab, mode):
    """crashup's [recovery] mode set to `mode` inside the block (crashup.conf rewritten, the daemon restarted), the
    lab's own configuration back after it."""
    import re
    conf = lab.CRASHUP_CONF.read_text()
    changed, count = re.subn(r"(?m)^mode = \w+$", f"mode = {mode}", conf, count=1)
    assert count == 1, f"no mode line in {lab.CRASHUP_CONF}"
    lab.CRASHUP_CONF.write_text(changed)
    restart_daemon()
    try:
        yield
    finally:
        lab.CRASHUP_CONF.write_text(conf)
        restart_daemon()


# --- the notification bus ------------------------------------------------------------------------------------------

EXCHANGE = "openstack"                      # crashup's control_exchange in the lab (the default)


def bus_url(lab) -> str:
    """The lab's transport URL as kombu takes it (amqp://): it holds the broker's password, never print it."""
    return lab.TRANSPORT_URL_FILE.read_text().strip().replace("rabbit://", "amqp://", 1)


def bus_connection(lab, timeout=2.0):
    import kombu
    conn = kombu.Connection(bus_url(lab), connect_timeout=timeout, transport_options={"max_retries": 0})
    conn.connect()
    return conn


def _declare(channel, name, keys, durable):
    """The control exchange as crashup and oslo make it (topic, not durable), and queue `name` bound to it with each
    routing key. crashup's own default queues (notifications.info, .error) are not durable: declare them so."""
    import kombu
    exchange = kombu.Exchange(EXCHANGE, type="topic", durable=False, auto_delete=False)
    queue = kombu.Queue(name, exchange=exchange, routing_key=keys[0], durable=durable, auto_delete=False)(channel)
    queue.declare()
    for key in keys[1:]:
        queue.bind_to(exchange=EXCHANGE, routing_key=key)
    return queue


def declare_queue(lab, name, keys, durable=True):
    """A queue of a consumer's own, bound before anything it must receive is published (a durable one keeps what
    arrives while its consumer is not there yet)."""
    with bus_connection(lab) as conn:
        _declare(conn.channel(), name, list(keys), durable)


def delete_queue(lab, name):
    with contextlib.suppress(Exception), bus_connection(lab) as conn:
        conn.channel().queue_delete(name)


class BusTap:
    """A kombu consumer of the lab's bus, in a thread, on queues {name: [routing keys]} declared and bound before
    start() returns (nothing published after that is missed). After a broker restart it connects again (every
    0.3 s) and declares and binds them again. Every delivery is kept: (arrival time, routing key, oslo message)."""

    def __init__(self, lab, queues, *, durable=True, delete=True):
        self.lab = lab
        self.queues = {name: list(keys) for name, keys in queues.items()}
        self.durable = durable
        self.delete = delete                    # the queues are deleted by stop() (never crashup's default ones)
        self.deliveries = []
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        for name, keys in self.queues.items():
            declare_queue(self.lab, name, keys, self.durable)
        self._thread = threading.Thread(target=self._run, name="e2e-bus-tap", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.delete:
            for name in self.queues:
                delete_queue(self.lab, name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        import socket
        import kombu
        while not self._stop.is_set():
            try:
                with bus_connection(self.lab) as conn:
                    channel = conn.channel()
                    queues = [_declare(channel, name, keys, self.durable) for name, keys in self.queues.items()]
                    kombu.Consumer(channel, queues=queues, on_message=self._on_message, auto_declare=False).consume()
                    while not self._stop.is_set():
                        try:
                            conn.drain_events(timeout=0.3)
                        except (socket.timeout, TimeoutError):
                            pass
            except Exception as e:              # noqa: BLE001 - a broker that went away: connect again
                self.errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(0.3)

    def _on_message(self, message):
        import json
        arrived = time.time()
        try:
            body = json.loads(message.body)
            msg = json.loads(body["oslo.message"])
        except (TypeError, ValueError, KeyError):
            msg = {"unreadable": repr(message.body)[:200]}
        with self._lock:
            self.deliveries.append((arrived, message.delivery_info.get("routing_key"), msg))
        message.ack()

    def events(self):
        """Each crashup event once (de-duplicated by its id, as a consumer must), at its first arrival, in arrival
        order: [(arrival time, routing key, oslo message)]; the event is message["payload"]."""
        with self._lock:
            deliveries = list(self.deliveries)
        seen, found = set(), []
        for arrived, key, msg in deliveries:
            event = msg.get("payload") if str(msg.get("event_type", "")).startswith("crashup.") else None
            if isinstance(event, dict) and event.get("id") not in seen:
                seen.add(event.get("id"))
                found.append((arrived, key, msg))
        return found

    def first(self, type_, subject):
        """(arrival time, routing key, message) of the first event of that type and subject, or None."""
        return next((d for d in self.events() if d[2]["event_type"] == type_ and d[2]["payload"]["subject"] == subject),
                    None)


class GuestWatch:
    """Every hypervisor's guests sampled in a thread (as often as the box answers, about every 0.2 s): a server of
    `server_ids` found on two hypervisors at once is recorded in `doubles` (no VM may ever run twice)."""

    def __init__(self, lab, server_ids):
        self.box = lab.nova()
        self.ids = set(server_ids)
        self.doubles = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e2e-guest-watch", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        while not self._stop.is_set():
            try:
                guests = self.box.guests()
            except Exception:                   # noqa: BLE001 - the box busy: sample again
                self._stop.wait(0.2)
                continue
            self.samples += 1
            for sid in self.ids:
                hosts = sorted(h for h, ids in guests.items() if sid in ids)
                if len(hosts) > 1:
                    self.doubles.append((time.time(), sid, hosts))
            self._stop.wait(0.2)
