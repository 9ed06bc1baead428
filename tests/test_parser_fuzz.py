"""The dump path's ctnetlink parser on built and broken messages (no root, no kernel).

Messages are built with :mod:`struct` as the kernel builds them
(tests/nlmsg.py).  Well-formed ones, and ones changed in ways netlink allows
(unknown attributes, duplicates, empty nests, attribute flags), must parse to
the record libnetfilter_conntrack's ``nfct_nlmsg_parse`` gives.  Broken ones
(truncated, a wrong attribute length, a length that overruns its parent, an
empty fixed-size attribute) must be refused with EBADMSG; random byte damage
must give a record or a clean error, never a crash.  Each message is parsed
from a heap buffer of exactly its length, so ``make test-asan`` and valgrind
see any read past it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nlmsg import (
    LONG,
    NLMSG_HDRLEN,
    Attr,
    TupleSpec,
    W,
    be16,
    be32,
    be64,
    encode,
    labels_words,
    leaf,
    nest,
    string,
    tuple_attr,
    u8,
)

from conntrack import _binding
from conntrack.errors import ConntrackOSError
from conntrack.flow import Flow

EXAMPLES = int(os.environ.get("CTPY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

AF4, AF6 = socket.AF_INET, socket.AF_INET6
PORTED = [W["IPPROTO_TCP"], W["IPPROTO_UDP"], W["IPPROTO_UDPLITE"], W["IPPROTO_SCTP"], W["IPPROTO_DCCP"]]
STATE_NEST = {
    W["IPPROTO_TCP"]: ("CTA_PROTOINFO_TCP", "CTA_PROTOINFO_TCP_STATE"),
    W["IPPROTO_SCTP"]: ("CTA_PROTOINFO_SCTP", "CTA_PROTOINFO_SCTP_STATE"),
    W["IPPROTO_DCCP"]: ("CTA_PROTOINFO_DCCP", "CTA_PROTOINFO_DCCP_STATE"),
}


# -- well-formed entries ---------------------------------------------------------

u16s = st.integers(0, 0xFFFF)
u32s = st.integers(0, 0xFFFFFFFF)
u64s = st.integers(0, (1 << 64) - 1)


@st.composite
def entries(draw: Any) -> Tuple[int, List[Attr], dict]:
    """(family, top-level attributes, what they say) for one conntrack entry."""
    family = draw(st.sampled_from([AF4, AF6]))
    alen = 4 if family == AF4 else 16
    addr = st.binary(min_size=alen, max_size=alen)
    icmp = W["IPPROTO_ICMP"] if family == AF4 else W["IPPROTO_ICMPV6"]
    proto = draw(st.sampled_from(PORTED + [W["IPPROTO_GRE"], icmp]))
    src, dst, rsrc, rdst = (draw(addr) for _ in range(4))
    zone_kind = draw(st.sampled_from(["none", "cta", "orig", "reply", "both"]))
    zo = draw(u16s) if zone_kind in ("orig", "both") else None
    zr = draw(u16s) if zone_kind in ("reply", "both") else None
    if proto == icmp:
        itype, icode, iid = draw(st.integers(0, 255)), draw(st.integers(0, 255)), draw(u16s)
        orig = TupleSpec(src, dst, proto, icmp=(itype, icode, iid), zone=zo)
        reply = TupleSpec(rsrc, rdst, proto, icmp=(draw(st.integers(0, 255)), icode, iid), zone=zr)
    else:
        sp, dp = draw(u16s), draw(u16s)
        orig = TupleSpec(src, dst, proto, sp, dp, zone=zo)
        reply = TupleSpec(rsrc, rdst, proto, draw(u16s), draw(u16s), zone=zr)
    said: dict = {"family": family, "proto": proto, "orig": orig}
    attrs = [tuple_attr(W["CTA_TUPLE_ORIG"], family, orig), tuple_attr(W["CTA_TUPLE_REPLY"], family, reply)]
    for name in ("status", "timeout", "mark", "id", "use"):
        if draw(st.booleans()):
            said[name] = draw(u32s)
            attrs.append(be32(W["CTA_" + name.upper()], said[name]))
    if zone_kind == "cta":
        said["zone"] = draw(u16s)
        attrs.append(be16(W["CTA_ZONE"], said["zone"]))
    if proto in STATE_NEST and draw(st.booleans()):
        outer, inner = STATE_NEST[proto]
        said["state"] = draw(st.integers(0, 255))
        kids = [u8(W[inner], said["state"])]
        # what the kernel sends besides the state, which the dump parser skips
        if proto == W["IPPROTO_TCP"]:
            kids += [u8(W["CTA_PROTOINFO_TCP_WSCALE_ORIGINAL"], 7, False),
                     leaf(W["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL"], b"\x03\x03", "raw", False)]
        elif proto == W["IPPROTO_SCTP"]:
            kids += [be32(W["CTA_PROTOINFO_SCTP_VTAG_ORIGINAL"], draw(u32s), False)]
        else:
            kids += [be64(W["CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ"], draw(u64s), False)]
        attrs.append(nest(W["CTA_PROTOINFO"], nest(W[outer], *draw(st.permutations(kids)))))
    if draw(st.booleans()):
        wide = draw(st.booleans())
        counters = [draw(u64s if wide else u32s) for _ in range(4)]
        said["counters"] = tuple(counters)
        put = be64 if wide else be32
        p, b = ("CTA_COUNTERS_PACKETS", "CTA_COUNTERS_BYTES") if wide else (
            "CTA_COUNTERS32_PACKETS", "CTA_COUNTERS32_BYTES")
        attrs.append(nest(W["CTA_COUNTERS_ORIG"], put(W[p], counters[0]), put(W[b], counters[1])))
        attrs.append(nest(W["CTA_COUNTERS_REPLY"], put(W[p], counters[2]), put(W[b], counters[3])))
    if draw(st.booleans()):
        said["start"] = draw(u64s)
        ts = [be64(W["CTA_TIMESTAMP_START"], said["start"])]
        if draw(st.booleans()):
            said["stop"] = draw(u64s)
            ts.append(be64(W["CTA_TIMESTAMP_STOP"], said["stop"]))
        attrs.append(nest(W["CTA_TIMESTAMP"], *ts))
    if draw(st.booleans()):
        bits = draw(st.integers(1, (1 << 128) - 1))
        said["labels"] = bits
        attrs.append(leaf(W["CTA_LABELS"], labels_words(bits), "labels"))
    if draw(st.booleans()):
        said["helper"] = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=15))
        attrs.append(nest(W["CTA_HELP"], string(W["CTA_HELP_NAME"], said["helper"])))
    if draw(st.booleans()):
        said["secctx"] = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80))
        attrs.append(nest(W["CTA_SECCTX"], string(W["CTA_SECCTX_NAME"], said["secctx"])))
    if draw(st.booleans()):
        m = TupleSpec(draw(addr), draw(addr), draw(st.sampled_from([W["IPPROTO_TCP"], W["IPPROTO_UDP"]])),
                      draw(u16s), draw(u16s))
        said["master"] = m
        attrs.append(tuple_attr(W["CTA_TUPLE_MASTER"], family, m))
    return family, draw(st.permutations(attrs)), said


def parse(data: bytes, reference: bool = False) -> Tuple[Flow, Optional[Flow], bool]:
    fast, ref, differ = _binding._parse_message(bytes(data), reference)
    return Flow._from_batch(fast, 0), (Flow._from_batch(ref, 0) if ref else None), differ


def agree(data: bytes) -> Flow:
    """Both parsers accept the message and give the same record."""
    fast, ref, differ = parse(data, reference=True)
    assert ref is not None, "libnetfilter_conntrack refused a well-formed message"
    assert not differ, "fast: %r\n ref: %r" % (fast.to_dict(), ref.to_dict())
    assert fast.to_dict() == ref.to_dict()
    return fast


def refused(data: bytes) -> None:
    with pytest.raises(ConntrackOSError) as e:
        parse(data)
    assert e.value.errno in (errno.EBADMSG, errno.EMSGSIZE), e.value


def _addr(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def _says(flow: Flow, said: dict) -> None:
    """The record holds what the message said (a check of the reference too)."""
    fam = said["family"]
    o = said["orig"]
    assert (str(flow.orig.src), str(flow.orig.dst)) == (_addr(fam, o.src), _addr(fam, o.dst))
    assert int(flow.proto) == said["proto"]
    if o.proto in PORTED:
        assert (flow.orig.sport, flow.orig.dport) == (o.sport, o.dport)
    elif o.icmp is not None:
        assert (flow.orig.icmp_type, flow.orig.icmp_code, flow.orig.icmp_id) == o.icmp
    for name in ("status", "timeout", "mark", "id"):
        if name in said:
            assert int(getattr(flow, name)) == said[name], name
    if "zone" in said:
        assert flow.zone == said["zone"]
    if "counters" in said:
        c = flow.counters
        assert c is not None
        assert (c.orig_packets, c.orig_bytes, c.reply_packets, c.reply_bytes) == said["counters"]
    assert flow.labels == frozenset(n for n in range(128) if said.get("labels", 0) >> n & 1)
    assert flow.helper == said.get("helper")
    assert flow.secctx == said.get("secctx")
    if "master" in said:
        assert flow.master is not None and flow.master.sport == said["master"].sport


# -- well-formed and netlink-legal variations -------------------------------------


@FUZZ
@given(entries())
def test_well_formed_messages_agree_with_libnetfilter_conntrack(entry: Any) -> None:
    family, attrs, said = entry
    _says(agree(encode(attrs, family).data), said)


def _all(attrs: List[Attr]) -> List[Tuple[List[Attr], int]]:
    """Every (parent's child list, index) in the tree, the top level included."""
    out = []
    for i, a in enumerate(attrs):
        out.append((attrs, i))
        if a.children is not None:
            out += _all(a.children)
    return out


def _nests(attrs: List[Attr]) -> List[List[Attr]]:
    lists = [attrs]
    for a in attrs:
        if a.children is not None:
            lists += _nests(a.children)
    return lists


@st.composite
def legal_variants(draw: Any) -> Tuple[int, List[Attr]]:
    """A well-formed entry changed the ways netlink allows: unknown attributes
    (some empty, some nested), a known attribute sent twice (the last counts),
    empty nests, NLA_F_NESTED / NLA_F_NET_BYTEORDER flags."""
    family, attrs, _ = draw(entries())
    for _ in range(draw(st.integers(1, 6))):
        how = draw(st.sampled_from(["unknown", "unknown-nest", "dup", "empty-nest", "flag"]))
        lists = _nests(attrs)
        target = draw(st.sampled_from(lists))
        if how == "unknown":
            data = draw(st.binary(max_size=12))
            target.insert(draw(st.integers(0, len(target))), Attr(draw(st.integers(200, 0x3FFF)), data))
        elif how == "unknown-nest":
            inner = [Attr(draw(st.integers(1, 0x3FFF)), draw(st.binary(max_size=6)))]
            target.insert(draw(st.integers(0, len(target))),
                          Attr(draw(st.integers(200, 0x3FFF)), children=inner, flags=W["NLA_F_NESTED"]))
        elif how == "dup" and target:
            src = draw(st.sampled_from(target))
            if src.type >= 200:
                continue
            copy = src.copy()
            if copy.children is None and copy.checked and src.type != W["CTA_PROTO_NUM"]:
                # same size, another value (a string stays NUL-terminated, labels stay non-empty)
                if copy.kind == "str":
                    copy.data = draw(st.text("abcdefghij", min_size=1, max_size=15)).encode() + b"\0"
                elif copy.kind == "labels":
                    copy.data = labels_words(draw(st.integers(1, (1 << 128) - 1)))
                else:
                    copy.data = draw(st.binary(min_size=len(copy.data), max_size=len(copy.data)))
            target.insert(draw(st.integers(0, len(target))), copy)
        elif how == "empty-nest":
            nests = [a for a in target if a.children is not None]
            if nests:
                draw(st.sampled_from(nests)).children = []
        elif how == "flag":
            spots = _all(attrs)
            parent, i = draw(st.sampled_from(spots))
            a = parent[i]
            a.flags |= W["NLA_F_NESTED"] if a.children is not None else W["NLA_F_NET_BYTEORDER"]
    return family, attrs


@FUZZ
@given(legal_variants())
def test_netlink_legal_variations_agree_with_libnetfilter_conntrack(variant: Any) -> None:
    family, attrs = variant
    agree(encode(attrs, family).data)


# -- broken messages ------------------------------------------------------------------


@FUZZ
@given(entries(), st.data())
def test_truncated_messages_are_refused_unless_cut_between_attributes(entry: Any, data: Any) -> None:
    family, attrs, _ = entry
    enc = encode(attrs, family)
    cut = data.draw(st.integers(0, len(enc.data) - 1))
    msg = bytearray(enc.data[:cut])
    if cut >= 4:
        struct.pack_into("=I", msg, 0, cut)
    orig_end = next(end for a, end in zip(attrs, enc.ends) if a.type == W["CTA_TUPLE_ORIG"])
    # a cut inside the last attribute's padding keeps it whole: the kernel's nla_parse
    # also accepts a final attribute whose alignment padding is missing
    whole = any(lo <= cut <= hi for lo, hi in zip(enc.top[::2], enc.top[1::2]))
    if whole and cut >= orig_end:
        agree(bytes(msg))  # whole attributes: a shorter but well-formed entry
    else:
        refused(bytes(msg))


@FUZZ
@given(entries(), st.data())
def test_a_wrong_or_empty_attribute_length_is_refused(entry: Any, data: Any) -> None:
    family, attrs, _ = entry
    enc = encode(attrs, family)
    targets = [s.attr for s in enc.spots if s.walked and s.attr.checked]
    a = data.draw(st.sampled_from(targets))
    if a.kind == "str":
        a.data = a.data[:-1]  # no terminating NUL (empty when it was the only byte)
    elif a.kind == "labels":
        a.data = a.data[:data.draw(st.integers(1, len(a.data) - 1).filter(lambda n: n % LONG))]
    else:
        n = data.draw(st.integers(0, len(a.data) + 8).filter(lambda n: n != len(a.data)))
        a.data = (a.data * 9)[:n]
    refused(encode(attrs, family).data)


@FUZZ
@given(entries(), st.data())
def test_a_length_that_overruns_its_parent_is_refused(entry: Any, data: Any) -> None:
    family, attrs, _ = entry
    enc = encode(attrs, family)
    spot = data.draw(st.sampled_from([s for s in enc.spots if s.walked]))
    room = spot.parent_end - spot.start
    struct.pack_into("=H", enc.data, spot.start, min(room + data.draw(st.integers(1, 64)), 0xFFFF))
    refused(bytes(enc.data))


@FUZZ
@given(entries(), st.data())
def test_random_damage_never_crashes(entry: Any, data: Any) -> None:
    family, attrs, _ = entry
    msg = bytearray(encode(attrs, family).data)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(NLMSG_HDRLEN if data.draw(st.booleans()) else 0, len(msg) - 1))
        msg[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        msg = msg[:data.draw(st.integers(0, len(msg)))]
    try:
        flow = parse(bytes(msg))[0]
    except ConntrackOSError as e:
        assert e.errno in (errno.EBADMSG, errno.EMSGSIZE, errno.EPROTO), e
    else:
        flow.to_dict()  # every field of an accepted record reads back


# -- single cases ---------------------------------------------------------------------


def _udp(extra: List[Attr], family: int = AF4) -> bytes:
    t = TupleSpec(b"\x0a\0\0\x01", b"\x0a\0\0\x02", W["IPPROTO_UDP"], 1, 2)
    return bytes(encode([tuple_attr(W["CTA_TUPLE_ORIG"], family, t)] + extra, family).data)


def test_labels_are_decoded_by_word() -> None:
    bits = [0, 31, 32, 63, 64, 127]
    flow = agree(_udp([leaf(W["CTA_LABELS"], labels_words(sum(1 << b for b in bits)), "labels")]))
    assert flow.labels == frozenset(bits)


def test_empty_labels_mean_none_and_odd_sizes_are_refused() -> None:
    assert agree(_udp([leaf(W["CTA_LABELS"], b"", "labels")])).labels == frozenset()
    refused(_udp([leaf(W["CTA_LABELS"], b"\1\0\0", "labels")]))


def test_header_errors_are_typed() -> None:
    good = _udp([])
    with pytest.raises(ConntrackOSError) as e:
        parse(good[:10])
    assert e.value.errno == errno.EMSGSIZE
    longer = bytearray(good)
    struct.pack_into("=I", longer, 0, len(good) + 4)
    with pytest.raises(ConntrackOSError) as e:
        parse(bytes(longer))
    assert e.value.errno == errno.EMSGSIZE
    other = bytes(encode([], AF4, subsys=W["NFNL_SUBSYS_CTNETLINK"] + 1).data)
    with pytest.raises(ConntrackOSError) as e:
        parse(other)
    assert e.value.errno == errno.EPROTO
    refused(bytes(encode([be32(W["CTA_MARK"], 1)], AF4).data))  # no original tuple


def test_a_message_is_read_only_within_its_length() -> None:
    """Trailing bytes past nlmsg_len (the next message in a buffer) are not read."""
    good = _udp([be32(W["CTA_MARK"], 5)])
    junk = good + bytes(encode([be32(W["CTA_MARK"], 9)], AF4).data)[NLMSG_HDRLEN + 4:]
    assert agree(junk).mark == 5


def test_zero_length_attributes() -> None:
    """Empty: a fixed-size attribute is refused; a nest or an unknown attribute is fine."""
    refused(_udp([leaf(W["CTA_MARK"], b"", "be32")]))
    refused(_udp([nest(W["CTA_HELP"], leaf(W["CTA_HELP_NAME"], b"", "str"))]))
    flow = agree(_udp([nest(W["CTA_TIMESTAMP"]), Attr(300, b""), nest(W["CTA_PROTOINFO"])]))
    assert flow.start is None and flow.state is None


def test_the_last_of_a_duplicated_attribute_counts() -> None:
    flow = agree(_udp([be32(W["CTA_MARK"], 1), be32(W["CTA_MARK"], 2),
                       nest(W["CTA_HELP"], string(W["CTA_HELP_NAME"], "ftp")),
                       nest(W["CTA_HELP"], string(W["CTA_HELP_NAME"], "sip"))]))
    assert flow.mark == 2 and flow.helper == "sip"
