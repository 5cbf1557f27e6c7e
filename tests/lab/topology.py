"""The lab's fixed shape: names, addresses, ports and paths. Every lab part reads it from here.

Compute nodes live in network namespaces joined by one bridge on the host, so the controller (host namespace) and
every node reach the same nova API address; BMCs listen on loopback UDP, which only the controller (where
pacemaker-fenced runs fence agents) needs to reach. The RabbitMQ broker (the notification bus) listens on loopback
too: crashup's recovery daemon, its only client in the lab, runs on the controller; compute nodes never reach it,
but in a lab with real guests (`lab up --guests`), where the nodes' guest monitors publish, it listens on BRIDGE_ADDR
as well (same port).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
#: runtime state (pids, sqlite, sockets, logs); `lab down` removes all but log/
LAB_DIR = pathlib.Path(os.environ.get("CRASHUP_LAB_DIR", REPO / ".lab"))
RUN_DIR = LAB_DIR / "run"
LOG_DIR = LAB_DIR / "log"
SECRETS_DIR = LAB_DIR / "secrets"
#: nova's own virtualenv (its pins never constrain crashup's); kept across labs as an install cache
NOVA_VENV = pathlib.Path(os.environ.get("CRASHUP_NOVA_VENV", REPO / ".venv-nova"))

CLUSTER_NAME = "crashuplab"
CONTROLLER = "ctl1"                      # corosync node name, on 127.0.0.1

BRIDGE = "crlab0"
BRIDGE_ADDR = "10.200.0.1"               # host side of the bridge: nova API, placement
PREFIX = 24
NOVA_API_PORT = 8774
PLACEMENT_PORT = 8778
CINDER_API_PORT = 8776                   # cinder-api (block-storage v3), beside nova's API on the bridge address
REMOTE_PORT = 3121                       # pacemaker-remoted
BMC_ADDR = "127.0.0.1"
BMC_BASE_PORT = 6230                     # node i's BMC listens on BMC_BASE_PORT + i
BMC_USER = "admin"
#: the notification bus: a throwaway RabbitMQ (tests/lab/rabbitmq.py), loopback only, ports apart from a site's own
#: broker (5672/25672/4369), so a RabbitMQ installed on the machine never meets the lab's
BUS_NODENAME = "crashup-lab@localhost"
BUS_PORT = 5673                          # AMQP
BUS_DIST_PORT = 25673                    # Erlang distribution (rabbitmqctl talks to the node through it)
BUS_EPMD_PORT = 4370                     # the broker's own epmd
BUS_VHOST = "crashup"
BUS_USER = "crashup"
DEFAULT_NODES = 3
RACK_SIZE = 8
MAX_NODES = 24                           # addresses .11-.34, BMC ports 6231-6254 (controllers' BMCs: 6291-)


@dataclasses.dataclass(frozen=True)
class Node:
    index: int                           # 1..N

    @property
    def name(self) -> str:               # Pacemaker node name == remote resource id
        return f"compute{self.index}"

    @property
    def nova_host(self) -> str:          # nova service host (short name, as most sites have)
        return f"compute{self.index}"

    @property
    def netns(self) -> str:
        return f"crlab-{self.name}"

    @property
    def veth_host(self) -> str:          # host end, enslaved to BRIDGE
        return f"crlab{self.index}h"

    @property
    def veth_node(self) -> str:          # node end, inside netns
        return f"crlab{self.index}n"

    @property
    def address(self) -> str:
        return f"10.200.0.{10 + self.index}"

    @property
    def bmc_port(self) -> int:
        return BMC_BASE_PORT + self.index

    @property
    def rack(self) -> str:               # its failure domain: racks of RACK_SIZE nodes
        return f"rack{(self.index - 1) // RACK_SIZE + 1}"


def nodes(count: int = DEFAULT_NODES) -> list[Node]:
    return [Node(i) for i in range(1, count + 1)]


def nova_url() -> str:
    return f"http://{BRIDGE_ADDR}:{NOVA_API_PORT}/v2.1"


def cinder_url() -> str:
    """The block-storage v3 endpoint (no project in the path)."""
    return f"http://{BRIDGE_ADDR}:{CINDER_API_PORT}/v3"


def nova_control_url() -> str:
    """The lab-only side channel of the nova box (stop/start a compute, write instance columns)."""
    return f"http://{BRIDGE_ADDR}:{NOVA_API_PORT}/novabox"
