"""The lab's real-guest plumbing without a lab: the initramfs archive, the kernel extraction, the domain XML the nova
box's driver defines, the broker's extra listener, the libvirt URI convention and the CLI's refusals."""
import importlib.util
import json
import lzma
import os
import pathlib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from unittest import mock

import pytest
from hypothesis import given, settings, strategies as st

from tests.lab import guestimage, guests, libvirtd, rabbitmq, topology
from tests.lab.netns import LabError

SERVER_PY = pathlib.Path(__file__).resolve().parent / "lab" / "novabox" / "server.py"


def parse_newc(data: bytes) -> list[tuple[str, int, int, int, bytes]]:
    """(name, mode, rdevmajor, rdevminor, data) of every entry but the trailer."""
    out, at = [], 0
    while True:
        assert data[at:at + 6] == b"070701"
        f = [int(data[at + 6 + 8 * i: at + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[at + 110: at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        body = data[at: at + filesize]
        at += filesize
        at += -at % 4
        if name == "TRAILER!!!":
            assert at == len(data)
            return out
        out.append((name, f[1], f[9], f[10], body))


names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=300), max_size=8))
def test_newc_round_trips(files):
    entries = [(n, 0o100644, d) for n, d in files.items()]
    assert [(n, m, d) for n, m, _, _, d in parse_newc(guestimage.newc(entries))] == entries


def test_initramfs_holds_init_busybox_the_modules_in_order_and_a_console():
    modules = {m: f"module {m}".encode() for m in guestimage.MODULES}
    got = {n: (mode, ma, mi, d) for n, mode, ma, mi, d in
           parse_newc(guestimage.initramfs(modules, b"BUSYBOX", b"#!/bin/sh\n"))}
    assert got["init"] == (0o100755, 0, 0, b"#!/bin/sh\n")
    assert got["bin/busybox"][3] == b"BUSYBOX"
    assert got["dev/console"][:3] == (0o020600, 5, 1)
    listed = [n for n in got if n.startswith("lib/modules/")]
    assert listed == [f"lib/modules/{pathlib.Path(m).name}" for m in guestimage.MODULES]
    # /init loads them by these names, in this order (watchdog core before i6300esb, pvpanic before pvpanic-mmio)
    init = guestimage.INIT.read_text()
    assert "for m in watchdog i6300esb pvpanic pvpanic-mmio" in init
    assert [pathlib.Path(m).stem for m in guestimage.MODULES] == ["watchdog", "i6300esb", "pvpanic", "pvpanic-mmio"]
    assert guestimage.READY in init


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio not installed")
def test_the_kernel_format_is_what_cpio_reads():
    data = guestimage.newc([("bin", 0o040755, b""), ("bin/x", 0o100755, b"hello"), ("dev", 0o040755, b""),
                            ("dev/console", 0o020600, b"5:1")])
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split() == ["bin", "bin/x", "dev", "dev/console"]


def test_vmlinux_is_the_first_xz_stream_holding_an_elf():
    elf = b"\x7fELF" + os.urandom(200)
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    blob = b"MZ setup code" + decoy + b"\0" * 7 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer"
    assert guestimage.vmlinux_from_vmlinuz(blob) == elf


@pytest.mark.parametrize("blob", [b"", b"MZ no xz at all", guestimage.XZ_MAGIC + b"broken",
                                  lzma.compress(b"no elf", format=lzma.FORMAT_XZ)])
def test_no_kernel_in_vmlinuz_is_one_clear_error(blob):
    with pytest.raises(LabError, match="no xz-compressed ELF kernel"):
        guestimage.vmlinux_from_vmlinuz(blob)


@pytest.fixture(scope="module")
def box():
    """tests/lab/novabox/server.py as a module (its top level is the standard library only)."""
    spec = importlib.util.spec_from_file_location("novabox_server_under_test", SERVER_PY)
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ):                    # it sets nova's environment for itself
        spec.loader.exec_module(module)
    return module


def domain(box, action=None, log="/x/g.log", sock="/x/g.cmd", name="instance-0000002a"):
    return ET.fromstring(box._domain_xml("0e4c8d5e-2f0f-4a55-9b2e-5c3c1c1c1c1c", name, 128, "/k/vmlinux",
                                         "/k/initrd.cpio", "console=ttyS0", log, sock, action))


@pytest.mark.parametrize("action", ["reset", "poweroff", "pause", "none"])
def test_the_domain_has_the_flavors_watchdog_a_panic_device_and_keeps_a_crash(box, action):
    root = domain(box, action)
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == "0e4c8d5e-2f0f-4a55-9b2e-5c3c1c1c1c1c"
    assert root.findtext("name") == "instance-0000002a"
    assert root.find("devices/watchdog").attrib == {"model": "i6300esb", "action": action}
    assert root.find("devices/panic").get("model") == "isa"
    assert root.findtext("on_crash") == "preserve"
    assert root.find("memory").text == "128" and root.find("memory").get("unit") == "MiB"


@pytest.mark.parametrize("action", [None, "disabled", "explode"])
def test_no_watchdog_unless_the_flavor_asks_for_a_known_action(box, action):
    assert domain(box, action).find("devices/watchdog") is None


@settings(max_examples=30, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"), min_size=1,
               max_size=30))
def test_paths_and_names_are_quoted_in_the_xml(box, text):
    root = domain(box, log=f"/x/{text}.log", sock=f"/x/{text}.cmd", name=text)
    serials = {s.find("target").get("port"): (s.get("type"), s.find("source").attrib) for s in root.iter("serial")}
    assert serials["0"] == ("file", {"path": f"/x/{text}.log", "append": "on"})   # every boot's lines
    assert serials["1"] == ("unix", {"mode": "bind", "path": f"/x/{text}.cmd"})
    assert root.findtext("name") == text


def test_the_libvirt_uri_is_the_contracts():
    sock = topology.RUN_DIR / "libvirt" / "compute2" / "libvirt-sock"
    assert libvirtd.uri("compute2") == f"qemu:///system?socket={sock}"
    assert libvirtd.uri_template().replace("{host}", "compute2") == libvirtd.uri("compute2")
    assert libvirtd.socket_path("compute2") == sock
    assert len(str(libvirtd.guest_dir("compute2") / ("0" * 36 + ".cmd"))) < 108   # a unix socket path's limit


def test_the_broker_listens_on_loopback_only_unless_asked(tmp_path):
    plain = rabbitmq.Broker(tmp_path / "a", 5999, dist_port=5998, epmd_port=5997)
    plain.prepare()
    assert plain._env()["RABBITMQ_NODE_IP_ADDRESS"] == "127.0.0.1"
    assert "listeners.tcp" not in plain.conf_file.read_text()
    both = rabbitmq.Broker(tmp_path / "b", 5999, dist_port=5998, epmd_port=5997, also_listen=("10.200.0.1",))
    both.prepare()
    conf = both.conf_file.read_text().splitlines()
    assert "listeners.tcp.1 = 127.0.0.1:5999" in conf and "listeners.tcp.2 = 10.200.0.1:5999" in conf
    assert "RABBITMQ_NODE_IP_ADDRESS" not in both._env() and "RABBITMQ_NODE_PORT" not in both._env()
    assert json.loads((tmp_path / "b" / "broker.json").read_text())["also_listen"] == ["10.200.0.1"]
    again = rabbitmq.Broker(tmp_path / "b")                 # a restart listens where the first start did
    assert again.also_listen == ("10.200.0.1",) and again.port == 5999


def test_bad_guest_failures_and_flavors_are_refused_before_any_io():
    with pytest.raises(LabError, match="unknown guest failure 'explode'"):
        guests.inject("0e4c8d5e-2f0f-4a55-9b2e-5c3c1c1c1c1c", "explode")
    with pytest.raises(LabError, match="watchdog action 'explode'"):
        guests.flavor(object(), watchdog_action="explode")


def test_the_guest_verb_needs_a_lab_with_guests(capsys):
    from tests.lab import __main__ as cli, lab
    with mock.patch.object(lab, "guests_on", return_value=False):
        assert cli.main(["guest", "0e4c8d5e-2f0f-4a55-9b2e-5c3c1c1c1c1c", "--how", "panic"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lab: the lab has no real guests: `python -m tests.lab up --guests`"]
