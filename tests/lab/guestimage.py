"""The real guests' boot image: Debian's kernel and a busybox initramfs, built once and cached across labs.

The kernel comes from Debian's own package (`apt-get download linux-image-<version>-amd64`); qemu boots the
uncompressed ELF (`vmlinux`, pulled out of the xz-compressed `vmlinuz` with Python's lzma) through PVH in ~2 s where
the bzImage takes ~4 s. The initramfs is busybox-static, the kernel's watchdog (i6300esb) and pvpanic modules and an
`/init` (guestimage/init.sh) that pets the watchdog every second while in mode `run` and takes commands on its second
serial port (ttyS1: `run`, `watchdog` = stop petting, `panic` = crash the kernel). It prints READY on its console
(ttyS0) once it pets. Everything is stdlib; the cache lives under LAB_DIR/cache (gitignored, kept by `lab down`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import lzma
import os
import pathlib
import shutil
import subprocess
import tempfile

from tests.lab.netns import LabError
from tests.lab.topology import LAB_DIR

CACHE = LAB_DIR / "cache" / "guest"
INIT = pathlib.Path(__file__).resolve().parent / "guestimage" / "init.sh"
BUSYBOX = pathlib.Path("/bin/busybox")
#: the line /init prints on ttyS0 when the guest is booted and petting its watchdog
READY = "crashup-guest: ready"
#: kernel modules /init loads, in dependency order (the package ships no modules.dep: depmod runs at install)
MODULES = ("drivers/watchdog/watchdog.ko", "drivers/watchdog/i6300esb.ko", "drivers/misc/pvpanic/pvpanic.ko",
           "drivers/misc/pvpanic/pvpanic-mmio.ko")
CMDLINE = "console=ttyS0 panic=0 loglevel=4"
XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclasses.dataclass(frozen=True)
class Image:
    kernel: pathlib.Path                 # the uncompressed vmlinux (ELF, PVH entry)
    initrd: pathlib.Path
    cmdline: str = CMDLINE


def kernel_package() -> str:
    """The kernel package Debian's `linux-image-amd64` points at (the current 6.1 ABI of this release)."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, timeout=60)
    for line in out.stdout.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-") and name.endswith("-amd64"):
            return name
    raise LabError("no Debian kernel package: `apt-cache depends linux-image-amd64` names none (apt-get update?)")


def vmlinux_from_vmlinuz(data: bytes) -> bytes:
    """The ELF kernel inside a bzImage compressed with xz (Debian's CONFIG_KERNEL_XZ): the first xz stream whose
    content starts with the ELF magic."""
    at = data.find(XZ_MAGIC)
    while at >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            return elf
        at = data.find(XZ_MAGIC, at + 1)
    raise LabError("no xz-compressed ELF kernel in vmlinuz")


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's newc format: (path, mode, data) entries; a character device's data is its
    b"major:minor" (so no mknod, no root needed to build it)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * (-n % 4))
    for ino, (path, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        rdev = (0, 0)
        if mode & 0o170000 == 0o020000:
            rdev, data = tuple(int(x) for x in data.split(b":")), b""
        name = path.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        pad(110 + len(name))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def initramfs(modules: dict[str, bytes], busybox: bytes, init: bytes) -> bytes:
    dirs = ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"]
    entries = [(d, 0o040755, b"") for d in dirs]
    entries += [("dev/console", 0o020600, b"5:1"), ("bin/busybox", 0o100755, busybox), ("bin/sh", 0o120777, b"busybox"),
                ("init", 0o100755, init)]
    entries += [(f"lib/modules/{pathlib.Path(m).name}", 0o100644, modules[m]) for m in MODULES]
    return newc(entries)


def _key() -> str:
    """What the image is made of, but the kernel's version: a cached image is used without asking apt (~1 s)."""
    h = hashlib.sha256()
    for f in (INIT, pathlib.Path(__file__)):
        h.update(f.read_bytes())
    h.update(BUSYBOX.read_bytes())
    return h.hexdigest()[:16]


def ensure(cache: pathlib.Path = CACHE, package: str | None = None) -> Image:
    """The cached image, built first if missing or stale (~10 s: a 70 MB download, xz decompression)."""
    if not BUSYBOX.exists():
        raise LabError(f"{BUSYBOX} missing: run `make deps` (busybox-static)")
    folder = cache / _key()
    image = Image(folder / "vmlinux", folder / "initrd.cpio")
    if image.kernel.exists() and image.initrd.exists():
        return image
    package = package or kernel_package()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        work = pathlib.Path(tmp)
        got = subprocess.run(["apt-get", "download", package], cwd=work, capture_output=True, text=True, timeout=600)
        debs = list(work.glob("*.deb"))
        if got.returncode or not debs:
            raise LabError(f"apt-get download {package} failed: {(got.stderr or got.stdout).strip()[-300:]}")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        ex = subprocess.run(["tar", "-x", "-C", str(work), "--wildcards", "./boot/vmlinuz-*",
                             *(f"./lib/modules/*/kernel/{m}" for m in MODULES)], stdin=tar.stdout,
                            capture_output=True, text=True, timeout=300)
        tar.stdout.close()
        if tar.wait(timeout=60) or ex.returncode:
            raise LabError(f"unpacking {debs[0].name} failed: {ex.stderr.strip()[-300:]}")
        vmlinuz = next(work.glob("boot/vmlinuz-*"))
        modules = {m: next(work.glob(f"lib/modules/*/kernel/{m}")).read_bytes() for m in MODULES}
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / "vmlinux.tmp"
        staged.write_bytes(vmlinux_from_vmlinuz(vmlinuz.read_bytes()))
        (folder / "initrd.tmp").write_bytes(initramfs(modules, BUSYBOX.read_bytes(), INIT.read_bytes()))
        os.replace(folder / "initrd.tmp", image.initrd)
        (folder / "kernel-package").write_text(package + "\n")
        os.replace(staged, image.kernel)                 # last: its presence means the image is whole
    for old in cache.iterdir():                          # images of older kernels or inits
        if old.is_dir() and old != folder and not old.name.startswith("build-"):
            shutil.rmtree(old, ignore_errors=True)
    return image
