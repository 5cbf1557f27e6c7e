"""Loopback services for the lab's controllers: `python -m tests.lab.ctlfwd SPEC.json`.

The lab's RabbitMQ and the compute nodes' BMC simulators listen on the host's 127.0.0.1, where the one-controller
lab's ctl1 runs. A controller of the three-controller lab has its own network namespace, hence its own loopback: this
process listens on 127.0.0.1 inside each controller's namespace (a socket keeps the namespace it was made in, so it
setns()es there, binds, and comes back) and relays to the same port on the host's loopback: TCP (the bus) and UDP
(IPMI). A controller whose link is down (the host end of its veth has no carrier: `fail ctlN --how net`) is cut off
from these too: its new connections are closed at once, its open ones shut, its datagrams dropped.

It runs in the host's namespace, so a controller's power-off (everything in its namespace killed) leaves it alone.
SPEC: {"controllers": [{"netns": "/run/netns/NAME", "veth": "HOST_END"}], "tcp": [PORT], "udp": [PORT],
"ready": FILE written once every socket is bound}.
"""
from __future__ import annotations

import ctypes
import json
import os
import selectors
import socket
import sys
import threading
import time

LOOPBACK = "127.0.0.1"
CARRIER_TTL = 0.2
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """setns(2) into a network namespace (os.setns is Python 3.12's); per thread, allowed with threads running."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class Link:
    """The carrier of a controller's veth (host end), read at most every CARRIER_TTL seconds."""

    def __init__(self, veth: str):
        self.path = f"/sys/class/net/{veth}/carrier"
        self.checked, self.state = 0.0, True

    def up(self) -> bool:
        now = time.monotonic()
        if now - self.checked > CARRIER_TTL:
            try:
                with open(self.path) as f:
                    self.state = f.read().strip() == "1"
            except OSError:                         # the host end itself down, or gone
                self.state = False
            self.checked = now
        return self.state


def bound_in(netns: str, kind: int, port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:port inside netns (this thread goes there and back)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        setns(target)
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        return s
    finally:
        setns(home)
        os.close(home)
        os.close(target)


class Tcp:
    def __init__(self, listener: socket.socket, port: int, link: Link):
        self.listener, self.port, self.link = listener, port, link
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.link.up():
                client.close()
                continue
            try:
                upstream = socket.create_connection((LOOPBACK, self.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            for s in (src, dst):
                if s in self.open:
                    self.open.discard(s)
                    s.close()

    def cut_if_down(self) -> None:
        if not self.link.up():
            with self.lock:
                for s in list(self.open):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


def serve_udp(listeners: list[tuple[socket.socket, int, Link]]) -> None:
    """Every controller's UDP listeners in one loop: a host-side socket per (listener, client address), whose
    replies go back to that client through the listener (one stable source port per client: IPMI sessions)."""
    sel = selectors.DefaultSelector()
    for listener, port, link in listeners:
        sel.register(listener, selectors.EVENT_READ, ("in", listener, port, link, None))
    upstreams: dict[tuple[int, tuple], socket.socket] = {}
    while True:
        for key, _ in sel.select():
            kind, listener, port, link, client = key.data
            try:
                data, addr = key.fileobj.recvfrom(65536)
            except OSError:
                continue
            if not link.up():
                continue                            # cut off: the datagram is lost, as on a dead link
            if kind == "in":
                up = upstreams.get((listener.fileno(), addr))
                if up is None:
                    up = upstreams[(listener.fileno(), addr)] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sel.register(up, selectors.EVENT_READ, ("out", listener, port, link, addr))
                up.sendto(data, (LOOPBACK, port))
            else:
                listener.sendto(data, client)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.lab.ctlfwd SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(open(argv[0]).read())
    tcp, udp = [], []
    for ctl in spec["controllers"]:
        link = Link(ctl["veth"])
        tcp += [Tcp(bound_in(ctl["netns"], socket.SOCK_STREAM, p), p, link) for p in spec.get("tcp", [])]
        udp += [(bound_in(ctl["netns"], socket.SOCK_DGRAM, p), p, link) for p in spec.get("udp", [])]
    for t in tcp:
        threading.Thread(target=t.serve, daemon=True).start()
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
    with open(spec["ready"], "w") as f:
        f.write("ready\n")
    while True:                                     # a cut link shuts its controller's open connections
        time.sleep(CARRIER_TTL)
        for t in tcp:
            t.cut_if_down()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
