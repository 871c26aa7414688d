"""TUN device by raw ioctl, with IFF_VNET_HDR and TUNSETOFFLOAD (TSO/USO super-packets).

`open_tun()` attaches to (or creates, in the calling thread's network namespace) a layer-3 TUN
device without packet information. With `vnet_hdr=True` every read and write starts with the
10-byte virtio_net_hdr (see `ntmobile.dataplane.vnet`). With `offloads=True` as well, the kernel is
told that this reader accepts partial checksums and TCP segmentation (TUN_F_CSUM|TSO4|TSO6) and,
when it accepts them (kernel >= 6.2), UDP segmentation (TUN_F_USO4|USO6): it then hands over
super-packets of up to 64 KB. The accepted set is probed from the largest down and reported in
`Tun.offloads` / `Tun.features`.

The fd is non-blocking. `read_into()` returns 0 when nothing is queued. `write()` returns 0 and
counts the packet in `Tun.dropped_link_down` when the kernel answers EIO, which it does while the
link is not yet up (the packet is dropped; the data loop must not die for it). Bringing the link up
and adding addresses and routes is `ntmobile.osops.netlink`'s job (gso_max_size and the relay's
link and routes: `ntmobile.osops.iproute`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from types import TracebackType

from ntmobile.dataplane.vnet import VNET_HDR_LEN, ZERO_HDR

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

OFFLOAD_TCP = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
OFFLOAD_ALL = OFFLOAD_TCP | TUN_F_USO4 | TUN_F_USO6

# Tried in this order; the first the kernel accepts wins.
_OFFLOAD_CANDIDATES = (OFFLOAD_ALL, OFFLOAD_TCP, TUN_F_CSUM)

_FEATURE_NAMES = {TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6", TUN_F_TSO_ECN: "tso_ecn",
                  TUN_F_USO4: "uso4", TUN_F_USO6: "uso6"}

IFNAMSIZ = 16
MAX_PACKET = VNET_HDR_LEN + 65535
"""A read buffer of this size holds any packet, super-packets included."""


class TunError(OSError):
    """Opening or configuring the TUN device failed."""


def feature_names(offloads: int) -> frozenset[str]:
    return frozenset(n for bit, n in _FEATURE_NAMES.items() if offloads & bit)


class Tun:
    """An open TUN queue. Use `open_tun()` to make one."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool, offloads: int) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offloads = offloads
        self.dropped_link_down = 0

    @property
    def features(self) -> frozenset[str]:
        """Names of the accepted offloads: subset of {csum, tso4, tso6, uso4, uso6}."""
        return feature_names(self.offloads)

    @property
    def uso(self) -> bool:
        return bool(self.offloads & TUN_F_USO4)

    def fileno(self) -> int:
        return self.fd

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Read one packet (with its vnet header when enabled) into `buf`; 0 when none is queued."""
        try:
            return os.readv(self.fd, (buf,))
        except BlockingIOError:
            return 0

    def write(self, buf: bytes | bytearray | memoryview) -> int:
        """Write one packet (starting with its vnet header when enabled). 0 if dropped: link down."""
        try:
            return os.write(self.fd, buf)
        except OSError as e:
            if e.errno == errno.EIO:
                self.dropped_link_down += 1
                return 0
            raise

    def writev(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write one packet given in pieces (e.g. vnet header + IP packet) with one syscall."""
        try:
            return os.writev(self.fd, parts)
        except OSError as e:
            if e.errno == errno.EIO:
                self.dropped_link_down += 1
                return 0
            raise

    def write_ip(self, packet: bytes | bytearray | memoryview) -> int:
        """Write a complete IP packet, prepending an all-zero vnet header when the device has one."""
        if self.vnet_hdr:
            return self.writev((ZERO_HDR, packet))
        return self.write(packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tun({self.name!r}, fd={self.fd}, vnet_hdr={self.vnet_hdr}, features={sorted(self.features)})"


def _set_offload(fd: int, want: int) -> int:
    """Ask for `want` (or the best supported subset of it); return what the kernel accepted."""
    for cand in _OFFLOAD_CANDIDATES:
        if cand & ~want:
            continue
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, cand)
            return cand
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise TunError(e.errno, f"TUNSETOFFLOAD {cand:#x}: {e.strerror}") from e
    fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    return 0


def open_tun(name: str, *, vnet_hdr: bool, offloads: bool, multi_queue: bool = False,
             uso: bool = True) -> Tun:
    """Attach to (or create) the TUN `name` ("%d" in the name lets the kernel pick a number).

    offloads requires vnet_hdr (the kernel needs the header to describe super-packets).
    uso=False keeps UDP segmentation off even when the kernel has it.
    """
    if offloads and not vnet_hdr:
        raise ValueError("offloads need vnet_hdr=True")
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"bad interface name {name!r}")
    flags = IFF_TUN | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(e.errno, f"open /dev/net/tun: {e.strerror}") from e
    try:
        ifr = bytearray(struct.pack("16sH", raw, flags).ljust(40, b"\0"))
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as e:
            raise TunError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from e
        actual = bytes(ifr[:IFNAMSIZ]).split(b"\0", 1)[0].decode()
        accepted = 0
        if offloads:
            accepted = _set_offload(fd, OFFLOAD_ALL if uso else OFFLOAD_TCP)
        return Tun(fd, actual, vnet_hdr, accepted)
    except BaseException:
        os.close(fd)
        raise
