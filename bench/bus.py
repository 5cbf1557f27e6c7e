#!/usr/bin/env python3
"""kombu or oslo.messaging for crashup's notifications? Both measured against one throwaway RabbitMQ, in one run.

kombu runs from crashup's venv through crashup_lib.bus.Link (what crashup ships: publisher confirms, every call
bounded); oslo.messaging from the lab's nova venv (.venv-nova) through its Notifier (driver messagingv2, the way
nova sends notifications). Each measure runs in fresh processes; the table prints both and oslo/kombu.

  import         seconds and RSS of importing what a publish needs: kombu with its pyamqp transport / oslo_messaging
                 with its rabbit driver (median of 3 processes)
  one-shot       a whole process: start, import, connect, publish one notification, exit (median of 3)
  publish        per-publish latency on a warm connection (median and p95 of 200)
  refused        nothing listens: how long one publish takes to give up, and whether it raises or loses silently
  frozen         the broker SIGSTOPped (TCP still accepts): a warm connection, then a fresh one; capped at --cap s
  slow           every TCP chunk delayed --delay ms each way (a proxy): one-shot connect + publish

    python bench/bus.py [--cap 20] [--delay 100] [--runs 3]

Needs rabbitmq-server (Debian) and the nova venv (make nova-venv). Prints figures; never asserts a timing.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CRASHUP_PY = REPO / ".venv" / "bin" / "python"
NOVA_PY = REPO / ".venv-nova" / "bin" / "python"
ENVELOPE_EVENT = {"specversion": "1", "id": "0b6c4f4e-8d8e-4f0e-9c55-7a4b4a9f2f11", "time": "2025-01-31T09:15:02.123Z",
                  "type": "crashup.host.failed", "source": "crashup@bench", "subject": "compute-1",
                  "payload": {"host": "compute-1", "node": "compute-1", "mode": "notify", "instances": []}}


# --- the workers (run in the venv of their library) -----------------------------------------------------------------

def _rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _Kombu:
    name = "kombu"

    def __init__(self, url_text: str, timeout: float):
        sys.path.insert(0, str(REPO))
        from crashup_lib import bus
        from crashup_lib.events import bus as events_bus
        self.bus, self.events_bus = bus, events_bus
        self.link = bus.Link(bus.parse_transport_url(url_text), timeout)
        self.body = events_bus.envelope(ENVELOPE_EVENT)

    def publish(self) -> None:
        self.link.publish("openstack", "notifications.info", self.body, queue="notifications.info")


class _Oslo:
    name = "oslo.messaging"

    def __init__(self, url_text: str, timeout: float, retry: int | None = 0):
        import logging
        from oslo_config import cfg
        import oslo_messaging
        self.lost = 0
        outer = self

        class Count(logging.Handler):
            def emit(self, record):
                if record.levelno >= logging.ERROR:
                    outer.lost += 1
        logging.getLogger("oslo_messaging").addHandler(Count())
        logging.getLogger("oslo_messaging").propagate = False
        conf = cfg.ConfigOpts()
        conf([], project="crashup-bench")
        transport = oslo_messaging.get_notification_transport(conf, url=url_text)
        self.notifier = oslo_messaging.Notifier(transport, publisher_id="crashup.bench", driver="messagingv2",
                                                topics=["notifications"], retry=retry)

    def publish(self) -> None:
        self.notifier.info({}, "crashup.host.failed", ENVELOPE_EVENT)


def _client(lib: str, url_text: str, timeout: float):
    return _Kombu(url_text, timeout) if lib == "kombu" else _Oslo(url_text, timeout)


def _attempt(client, cap: float) -> dict:
    """One publish in a thread capped at `cap` s: how long, and did it raise, return (lost?) or stay blocked."""
    box: list = []
    lost_before = getattr(client, "lost", 0)

    def run():
        try:
            client.publish()
            box.append(("returned", None))
        except Exception as e:              # noqa: BLE001
            box.append(("raised", f"{type(e).__name__}: {str(e)[:120]}"))
    t0 = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(cap)
    took = time.monotonic() - t0
    if not box:
        return {"seconds": took, "outcome": "blocked", "detail": f"still blocked after {cap:g} s"}
    outcome, detail = box[0]
    if outcome == "returned" and getattr(client, "lost", 0) > lost_before:
        outcome, detail = "lost silently", "returned; logged 'Could not send notification', message dropped"
    return {"seconds": took, "outcome": outcome, "detail": detail}


def worker(args) -> None:
    url_text = pathlib.Path(args.url_file).read_text().strip() if args.url_file else ""
    out: dict = {}
    if args.scenario == "import":
        before, t0 = _rss(), time.monotonic()
        if args.lib == "kombu":                 # what a publish needs (kombu's own imports are lazy)
            import kombu
            import kombu.transport.pyamqp  # noqa: F401
            kombu.Connection, kombu.Producer, kombu.Exchange, kombu.Queue
        else:                                   # the same for oslo: the package and its rabbit driver
            import oslo_messaging  # noqa: F401
            from oslo_messaging._drivers import impl_rabbit  # noqa: F401
        out = {"seconds": time.monotonic() - t0, "rss": _rss() - before}
    elif args.scenario == "oneshot":
        _client(args.lib, url_text, args.timeout).publish()
    elif args.scenario == "publish":
        client = _client(args.lib, url_text, args.timeout)
        client.publish()
        times = []
        for _ in range(args.count):
            t0 = time.perf_counter()
            client.publish()
            times.append(time.perf_counter() - t0)
        times.sort()
        out = {"median": statistics.median(times), "p95": times[int(len(times) * 0.95) - 1]}
    elif args.scenario in ("refused", "slow", "frozen-fresh"):
        if args.scenario == "frozen-fresh":
            print("ready", flush=True)
            sys.stdin.readline()
        out = _attempt(_client(args.lib, url_text, args.timeout), args.cap)
    elif args.scenario == "frozen-warm":
        client = _client(args.lib, url_text, args.timeout)
        client.publish()
        print("ready", flush=True)
        sys.stdin.readline()                # the driver froze the broker
        out = _attempt(client, args.cap)
    print(json.dumps(out), flush=True)
    sys.stdout.flush()
    os._exit(0)                             # a blocked oslo thread must not hold the process


# --- the driver ------------------------------------------------------------------------------------------------------

def _python(lib: str) -> pathlib.Path:
    return CRASHUP_PY if lib == "kombu" else NOVA_PY


def _run(lib: str, scenario: str, args, url_file: str = "", *, freeze=None, timeout: float = 120) -> tuple[dict, float]:
    argv = [str(_python(lib)), str(pathlib.Path(__file__).resolve()), "--worker", lib, "--scenario", scenario,
            "--cap", str(args.cap), "--timeout", str(args.timeout), "--count", str(args.count)]
    if url_file:
        argv += ["--url-file", url_file]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(REPO))
    try:
        if freeze is not None:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{lib} {scenario}: worker said {line!r}: {proc.stderr.read()[-500:]}")
            freeze()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - t0
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{lib} {scenario}: exit {proc.returncode}: {err.strip()[-500:]}")
    return json.loads(lines[-1]), took


class SlowProxy:
    """127.0.0.1:port -> target, each chunk forwarded `delay` seconds after it arrived (each way)."""

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay = target_port, delay
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while True:
                select.select([src], [], [])
                data = src.recv(65536)
                if not data:
                    break
                time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def _fmt_s(v: float) -> str:
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _ratio(k: float, o: float) -> str:
    return f"{o / k:.1f}x" if k > 0 else "-"


def driver(args) -> int:
    sys.path.insert(0, str(REPO))
    from tests.lab import rabbitmq
    why = rabbitmq.available()
    if why:
        print(f"bench/bus.py: {why}", file=sys.stderr)
        return 1
    if not NOVA_PY.exists():
        print("bench/bus.py: no nova venv with oslo.messaging (make nova-venv)", file=sys.stderr)
        return 1
    libs = ("kombu", "oslo.messaging")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="crashup-bench-bus-") as tmp:
        broker = rabbitmq.Broker(pathlib.Path(tmp) / "broker")
        broker.start()
        try:
            url_file = str(broker.write_url_file(pathlib.Path(tmp) / "url"))
            refused_port = rabbitmq.free_port()
            refused_file = pathlib.Path(tmp) / "refused"
            refused_file.write_text(broker.transport_url().replace(f":{broker.port}/", f":{refused_port}/") + "\n")
            proxy = SlowProxy(broker.port, args.delay / 1000)
            slow_file = pathlib.Path(tmp) / "slow"
            slow_file.write_text(broker.transport_url().replace(f":{broker.port}/", f":{proxy.port}/") + "\n")
            print(f"broker: RabbitMQ on 127.0.0.1:{broker.port} (started in {broker.start_seconds:.1f} s); "
                  f"kombu via {CRASHUP_PY.relative_to(REPO)}, oslo.messaging via {NOVA_PY.relative_to(REPO)}",
                  flush=True)
            res: dict = {lib: {} for lib in libs}
            for lib in libs:
                imports = [_run(lib, "import", args)[0] for _ in range(args.runs)]
                res[lib]["import_s"] = statistics.median(i["seconds"] for i in imports)
                res[lib]["import_rss"] = statistics.median(i["rss"] for i in imports)
                res[lib]["oneshot"] = statistics.median(_run(lib, "oneshot", args, url_file)[1]
                                                        for _ in range(args.runs))
                res[lib]["publish"] = _run(lib, "publish", args, url_file)[0]
                res[lib]["refused"] = _run(lib, "refused", args, str(refused_file))[0]
                res[lib]["slow"] = _run(lib, "slow", args, str(slow_file))[0]
                for scenario in ("frozen-warm", "frozen-fresh"):
                    try:
                        res[lib][scenario] = _run(lib, scenario, args, url_file, freeze=broker.freeze,
                                                  timeout=args.cap + 60)[0]
                    finally:
                        broker.thaw()
                print(f"  {lib}: measured", flush=True)
            proxy.close()
        finally:
            broker.stop()
    k, o = res["kombu"], res["oslo.messaging"]
    rows.append(("import (s)", _fmt_s(k["import_s"]), _fmt_s(o["import_s"]), _ratio(k["import_s"], o["import_s"])))
    rows.append(("import (RSS)", f"{k['import_rss'] / 2**20:.1f} MiB", f"{o['import_rss'] / 2**20:.1f} MiB",
                 _ratio(k["import_rss"], o["import_rss"])))
    rows.append(("one-shot process", _fmt_s(k["oneshot"]), _fmt_s(o["oneshot"]), _ratio(k["oneshot"], o["oneshot"])))
    for key in ("median", "p95"):
        rows.append((f"publish, warm ({key})", _fmt_s(k["publish"][key]), _fmt_s(o["publish"][key]),
                     _ratio(k["publish"][key], o["publish"][key])))
    for scenario, label in (("refused", "refused"), ("frozen-warm", "frozen, warm conn."),
                            ("frozen-fresh", "frozen, new conn."), ("slow", f"slow (+{args.delay:g} ms/chunk)")):
        a, b = k[scenario], o[scenario]
        rows.append((f"{label}: time", _fmt_s(a["seconds"]), _fmt_s(b["seconds"]) + ("+" if b["outcome"] == "blocked"
                                                                                        else ""),
                     _ratio(a["seconds"], b["seconds"])))
        rows.append((f"{label}: outcome", a["outcome"], b["outcome"], ""))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':<{width}}  {'kombu (crashup_lib.bus)':<26}{'oslo.messaging Notifier':<26}oslo/kombu")
    for name, a, b, ratio in rows:
        print(f"{name:<{width}}  {a:<26}{b:<26}{ratio}")
    print(f"\n(kombu: publish_timeout {args.timeout:g} s, publisher confirms; oslo: retry=0, its defaults otherwise; "
          f"frozen capped at {args.cap:g} s; a '+' time means still blocked then)")
    for scenario in ("refused", "frozen-warm", "frozen-fresh"):
        for lib in libs:
            if res[lib][scenario].get("detail"):
                print(f"  {scenario:<13}{lib:<16}{res[lib][scenario]['detail']}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cap", type=float, default=20.0, help="longest wait on one blocked publish (s)")
    p.add_argument("--delay", type=float, default=100.0, help="the slow broker's delay per chunk, each way (ms)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=200, help="publishes timed on a warm connection")
    p.add_argument("--timeout", type=float, default=2.0, help="kombu's publish_timeout (s)")
    p.add_argument("--worker", choices=("kombu", "oslo.messaging"), help=argparse.SUPPRESS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)
    p.add_argument("--url-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.lib = args.worker
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
