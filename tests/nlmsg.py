"""Build ctnetlink conntrack messages with :mod:`struct`, as the kernel would.

A message is a tree of :class:`Attr` (a leaf carries bytes, a nest carries
children).  Encoding records where each attribute sits, so a test can break
one length field exactly.  Attribute numbers come from the installed headers
through ``_binding.WIRE``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from conntrack import _binding
from conntrack._binding import WIRE

W = WIRE
NLA_HDRLEN = 4
NLMSG_HDRLEN = 16
NFGEN_LEN = 4
LONG = struct.calcsize("L")  # the kernel's unsigned long on this host

#: Nests the dump parser walks (below them every attribute's size is checked).
WALKED = {
    (0, W["CTA_TUPLE_ORIG"]), (0, W["CTA_TUPLE_REPLY"]), (0, W["CTA_TUPLE_MASTER"]),
    (0, W["CTA_PROTOINFO"]), (0, W["CTA_COUNTERS_ORIG"]), (0, W["CTA_COUNTERS_REPLY"]),
    (0, W["CTA_TIMESTAMP"]), (0, W["CTA_HELP"]), (0, W["CTA_SECCTX"]),
    (1, W["CTA_TUPLE_IP"]), (1, W["CTA_TUPLE_PROTO"]),
    (1, W["CTA_PROTOINFO_TCP"]), (1, W["CTA_PROTOINFO_SCTP"]), (1, W["CTA_PROTOINFO_DCCP"]),
}


def pad(n: int) -> int:
    return (n + 3) & ~3


@dataclass
class Attr:
    """One netlink attribute: a leaf (``data``) or a nest (``children``).

    ``checked`` marks a leaf whose size the dump parser checks (it reads it);
    ``kind`` says what a well-formed value looks like ("u8", "be16", "be32",
    "be64", "addr", "str", "labels", "raw").
    """

    type: int
    data: bytes = b""
    children: Optional[List[Attr]] = None
    checked: bool = False
    kind: str = "raw"
    flags: int = 0
    length: Optional[int] = None  # a wrong nla_len to write instead of the real one

    @property
    def nest(self) -> bool:
        return self.children is not None

    def copy(self) -> Attr:
        return Attr(self.type, self.data, None if self.children is None else [c.copy() for c in self.children],
                    self.checked, self.kind, self.flags, self.length)


def leaf(t: int, data: bytes, kind: str, checked: bool = True) -> Attr:
    return Attr(t, data, None, checked, kind)


def nest(t: int, *children: Attr) -> Attr:
    return Attr(t, b"", list(children), False, "nest")


def u8(t: int, v: int, checked: bool = True) -> Attr:
    return leaf(t, struct.pack("B", v), "u8", checked)


def be16(t: int, v: int, checked: bool = True) -> Attr:
    return leaf(t, struct.pack("!H", v), "be16", checked)


def be32(t: int, v: int, checked: bool = True) -> Attr:
    return leaf(t, struct.pack("!I", v), "be32", checked)


def be64(t: int, v: int, checked: bool = True) -> Attr:
    return leaf(t, struct.pack("!Q", v), "be64", checked)


def string(t: int, s: str) -> Attr:
    return leaf(t, s.encode() + b"\0", "str")


def labels_words(bits: int, nbytes: int = 16) -> bytes:
    """The kernel's CTA_LABELS payload: native-endian unsigned long words."""
    words = [(bits >> (8 * LONG * i)) & ((1 << (8 * LONG)) - 1) for i in range(nbytes // LONG)]
    return struct.pack("@%dL" % len(words), *words)


@dataclass
class Spot:
    """Where an encoded attribute sits: its offset and its parent's payload end."""

    attr: Attr
    start: int
    parent_end: int
    walked: bool  # its parent is a nest the dump parser walks (or the message itself)


@dataclass
class Encoded:
    data: bytearray
    spots: List[Spot] = field(default_factory=list)
    top: List[int] = field(default_factory=list)  # offsets where a top-level attribute ends (padded or not)
    ends: List[int] = field(default_factory=list)  # each top-level attribute's padded end


def _encode(a: Attr, out: bytearray, spots: List[Spot], depth: int, walked: bool) -> None:
    start = len(out)
    out += b"\0\0\0\0"
    if a.children is not None:
        inner = (depth, a.type) in WALKED
        for c in a.children:
            _encode(c, out, spots, depth + 1, inner)
        length = len(out) - start
    else:
        out += a.data
        length = NLA_HDRLEN + len(a.data)
        out += b"\0" * (pad(length) - length)
    struct.pack_into("=HH", out, start, a.length if a.length is not None else length, a.type | a.flags)
    spots.append(Spot(a, start, -1, walked))


def encode(attrs: List[Attr], family: int, msg: Optional[int] = None, flags: int = 0, seq: int = 0,
           subsys: Optional[int] = None) -> Encoded:
    """A whole netlink message (header, nfgenmsg, attributes)."""
    out = bytearray(NLMSG_HDRLEN)
    out += struct.pack("=BBH", family, 0, 0)
    spots: List[Spot] = []
    top: List[int] = []
    for a in attrs:
        start = len(out)
        _encode(a, out, spots, 0, True)
        top += [start + _size(a), len(out)]
    _parent_ends(attrs, spots, len(out))
    t = ((W["NFNL_SUBSYS_CTNETLINK"] if subsys is None else subsys) << 8) | (
        W["IPCTNL_MSG_CT_NEW"] if msg is None else msg)
    struct.pack_into("=IHHII", out, 0, len(out), t, flags, seq, 0)
    return Encoded(out, spots, top, top[1::2])


def _parent_ends(attrs: List[Attr], spots: List[Spot], msg_end: int) -> None:
    """Fill each spot's parent_end (the end of its parent's payload)."""
    by_attr: Dict[int, Spot] = {id(s.attr): s for s in spots}

    def walk(children: List[Attr], end: int) -> None:
        for c in children:
            s = by_attr[id(c)]
            s.parent_end = end
            if c.children is not None:
                real = _size(c)
                walk(c.children, s.start + real)

    walk(attrs, msg_end)


def _size(a: Attr) -> int:
    if a.children is None:
        return NLA_HDRLEN + len(a.data)
    return NLA_HDRLEN + sum(pad(_size(c)) for c in a.children)


# -- well-formed entries ---------------------------------------------------------


@dataclass
class TupleSpec:
    src: bytes
    dst: bytes
    proto: int
    sport: int = 0
    dport: int = 0
    icmp: Optional[Tuple[int, int, int]] = None  # type, code, id
    zone: Optional[int] = None


def tuple_attr(t: int, family: int, spec: TupleSpec) -> Attr:
    v6 = family == socket.AF_INET6
    ip = nest(W["CTA_TUPLE_IP"],
              leaf(W["CTA_IP_V6_SRC" if v6 else "CTA_IP_V4_SRC"], spec.src, "addr"),
              leaf(W["CTA_IP_V6_DST" if v6 else "CTA_IP_V4_DST"], spec.dst, "addr"))
    proto = nest(W["CTA_TUPLE_PROTO"], u8(W["CTA_PROTO_NUM"], spec.proto))
    if spec.icmp is not None:
        pre = "CTA_PROTO_ICMPV6_" if v6 else "CTA_PROTO_ICMP_"
        itype, icode, iid = spec.icmp
        proto.children += [be16(W[pre + "ID"], iid), u8(W[pre + "TYPE"], itype), u8(W[pre + "CODE"], icode)]
    else:
        proto.children += [be16(W["CTA_PROTO_SRC_PORT"], spec.sport), be16(W["CTA_PROTO_DST_PORT"], spec.dport)]
    kids = [ip, proto]
    if spec.zone is not None:
        kids.append(be16(W["CTA_TUPLE_ZONE"], spec.zone))
    return nest(t, *kids)


# -- a raw ctnetlink socket (root tests: get/create replies and events, as sent) ---------

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33
NLMSG_ERROR = 2
NLMSG_DONE = 3


def netlink_socket(ns_path: str, groups: int = 0) -> socket.socket:
    """A NETLINK_NETFILTER socket made inside the network namespace at *ns_path*.

    A short-lived thread enters the namespace (setns moves only that thread)
    and makes the socket, which stays in that namespace."""
    box: Dict[str, object] = {}

    def work() -> None:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _binding.setns(fd)
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind((0, groups))
            box["s"] = s
        except BaseException as exc:  # handed to the caller
            box["e"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]  # type: ignore[misc]
    return box["s"]  # type: ignore[return-value]


def split(buf: bytes) -> List[bytes]:
    """The netlink messages in one receive buffer."""
    out = []
    off = 0
    while off + NLMSG_HDRLEN <= len(buf):
        (length,) = struct.unpack_from("=I", buf, off)
        if length < NLMSG_HDRLEN or off + length > len(buf):
            raise ValueError("bad netlink message at %d" % off)
        out.append(bytes(buf[off:off + length]))
        off += pad(length)
    return out


def msg_type(msg: bytes) -> int:
    return struct.unpack_from("=H", msg, 4)[0]


def exchange(s: socket.socket, attrs: List[Attr], family: int, msg: int, flags: int, seq: int) -> List[bytes]:
    """Send one request with NLM_F_ACK; the replies to it before the acknowledgement
    (an NLM_F_ECHO echo is an event: it comes with sequence number 0)."""
    req = encode(attrs, family, msg=msg, flags=W["NLM_F_REQUEST"] | W["NLM_F_ACK"] | flags, seq=seq).data
    s.send(bytes(req))
    got = []
    while True:
        for m in split(s.recv(1 << 20)):
            if struct.unpack_from("=I", m, 8)[0] not in (seq, 0):
                continue
            if msg_type(m) == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", m, NLMSG_HDRLEN)
                if err:
                    raise OSError(-err, os.strerror(-err))
                return got
            got.append(m)


def drain(s: socket.socket) -> List[bytes]:
    """Every message queued on a socket now."""
    out: List[bytes] = []
    while True:
        try:
            out += split(s.recv(1 << 20, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out
