"""The filter's field table (``conntrack.filter.FIELDS``) against everything derived from it:
the dataclass, the constructor, ``replace``, ``matches_everything``, ``explain``, the command
line's options and the binding's C structs (no root needed)."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import ipaddress
from typing import Any, Dict, List

import pytest

from conntrack import Filter, InvalidValue, KernelFeatures, _binding, cli
from conntrack.filter import FIELDS, STATUS, TUPLE
from conntrack.plan import BPFPart, CheckPart, KernelPart, NatMatch, Plan, TuplePart

# One restricting IPv4-compatible value per field; a field added to Filter without a
# sample here fails test_every_field_has_a_sample, so the tests below cover it too.
SAMPLES = {
    "family": "ipv4",
    "proto": "tcp",
    "src": "10.0.0.0/8",
    "dst": "10.1.2.3",
    "reply_src": "10.1.2.3",
    "reply_dst": "192.168.0.0/16",
    "sport": 1000,
    "dport": (80, 443),
    "state": "ESTABLISHED",
    "status": "ASSURED",
    "unreplied": True,
    "assured": True,
    "snat": True,
    "dnat": False,
    "mark": "0x10/0xff",
    "zone": 3,
    "labels": [1, 64],
    "orig_zone": 2,
    "reply_zone": 5,
    "src_nat": "10.9.9.9",
    "dst_nat": True,
    "any_nat": "10.8.8.8:53",
}

# The same values as typed on the command line, where str(sample) is not it.
TYPED = {"dport": "80-443"}

PROFILES = [KernelFeatures.none(), KernelFeatures.oldest(), KernelFeatures.from_version("6.12"),
            KernelFeatures(**{f.name: True for f in dataclasses.fields(KernelFeatures) if f.name != "decided"})]


def test_every_field_has_a_sample():
    assert set(SAMPLES) == {f.name for f in FIELDS}


def test_the_table_is_the_dataclass_and_the_signature():
    """Filter's fields and its typed __init__ are written out for type checkers: both say
    exactly what the table says, in its order (the repr's order)."""
    names = [f.name for f in FIELDS]
    assert [f.name for f in dataclasses.fields(Filter)] == names
    params = list(inspect.signature(Filter.__init__).parameters.values())[1:]
    assert [p.name for p in params] == names
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in params)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"family"}))
def test_adding_a_family_keeps_every_field(name):
    flt = Filter(**{name: SAMPLES[name]})
    rebuilt = flt.replace(family="ipv4")
    assert rebuilt.family is not None
    assert getattr(rebuilt, name) == getattr(flt, name) is not None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_replace_round_trips_every_field(name):
    flt = Filter(**{name: SAMPLES[name]})
    assert flt.replace() == flt and hash(flt.replace()) == hash(flt) and repr(flt.replace()) == repr(flt)
    assert getattr(flt.replace(**{name: None}), name) is None


def test_replace_checks_like_the_constructor():
    with pytest.raises(ValueError, match="family"):
        Filter(src="10.0.0.1").replace(family="ipv6")
    with pytest.raises(TypeError, match="nope"):
        Filter().replace(nope=1)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_set_field_restricts(name):
    assert not Filter(**{name: SAMPLES[name]}).matches_everything


@pytest.mark.parametrize("keywords", [{}, {"mark": "0/0"}, {"status": 0}, {"status": []}, {"labels": []},
                                      {"labels": 0}, {"proto": None, "src": None}])
def test_empty_forms_match_everything(keywords):
    assert Filter(**keywords).matches_everything
    for feat in PROFILES:  # and compile to nothing but what the family says
        plan = Filter(**keywords).compile(feat)
        assert not plan.kernel and not plan.user and not plan.events_bpf and plan.flush_ok


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_explain_mentions_every_set_field(name):
    flt = Filter(**{name: SAMPLES[name]})
    for feat in PROFILES:
        for events in (False, True):
            text = flt.explain(feat, events=events)
            assert "%s=" % name in text, (feat, text)


def _argv(name: str) -> List[List[str]]:
    """Each spelling of a field on the command line with the sample's value, and the value meant."""
    out = []
    for opt in next(f for f in FIELDS if f.name == name).options:
        for flag in opt.flags:
            if opt.metavar is None or SAMPLES[name] is opt.const is True:
                out.append(([flag], opt.const))
            elif opt.repeat and isinstance(SAMPLES[name], list):
                out.append(([a for v in SAMPLES[name] for a in (flag, str(v))], SAMPLES[name]))
            else:
                out.append(([flag, TYPED.get(name, str(SAMPLES[name]))], SAMPLES[name]))
    return out


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("command", ["list", "count", "delete", "explain", "events", "summary", "top"])
def test_every_field_is_an_option_of_every_filtering_command(name, command):
    parser = cli._parser("pyconntrack")
    spellings = _argv(name)
    assert spellings
    for argv, value in spellings:
        args = parser.parse_args([command, *argv])
        assert cli._filter(args) == Filter(**{name: value}), argv


def test_errors_name_the_fields_option():
    for f in FIELDS:
        assert cli._OPTION_OF[f.name] in [flag for opt in f.options for flag in opt.flags]
    for argv, option in ((["--dport", "70000"], "--dport"), (["--label", "200"], "--label"),
                         (["--orig-zone", "0"], "--orig-zone"), (["--any-nat", "x:1:2"], "--any-nat")):
        args = cli._parser("pyconntrack").parse_args(["count", *argv])
        with pytest.raises(ValueError) as info:
            cli._filter(args)
        assert cli._message(info.value).startswith(option), cli._message(info.value)


def test_options_that_stand_for_a_value_exclude_each_other():
    parser = cli._parser("pyconntrack")
    for first, second in (("--unreplied", "--replied"), ("--assured", "--no-assured")):
        with pytest.raises(SystemExit):
            parser.parse_args(["count", first, second])
    assert cli._filter(parser.parse_args(["count", "--no-assured"])) == Filter(assured=False)


# -- the plan holds Python values only, and the binding maps every part ----------------------


_PLAIN = (type(None), bool, int, str, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address,
          ipaddress.IPv4Network, ipaddress.IPv6Network, enum.Enum)


def _leaves(value: Any) -> List[Any]:
    if dataclasses.is_dataclass(value):
        return [x for f in dataclasses.fields(value) for x in _leaves(getattr(value, f.name))]
    if isinstance(value, tuple) and not isinstance(value, enum.Enum):
        return [x for v in value for x in _leaves(v)]
    return [value]


def _everything() -> Filter:
    kw: Dict[str, Any] = dict(SAMPLES, status="CONFIRMED", src="10.0.0.1", dport=443)
    return Filter(**kw)


@pytest.mark.parametrize("feat", PROFILES, ids=["none", "oldest", "6.12", "all"])
def test_a_plan_holds_only_python_values(feat):
    plan = _everything().compile(feat)
    assert isinstance(plan, Plan)
    assert all(isinstance(x, _PLAIN) for x in _leaves(plan)), [type(x) for x in _leaves(plan)]
    assert hash(plan) == hash(_everything().compile(feat))  # frozen: the binding caches by part


def test_the_binding_maps_every_check_and_bpf_field():
    # every field the C check reads: the filter's fields, the status ones folded into status_mask
    folded = {f.name for f in FIELDS if f.carrier is STATUS}
    assert [name for name, _ in _binding._CHECK_BITS] == [
        f.name for f in dataclasses.fields(CheckPart) if f.name not in folded]
    assert [f.name for f in dataclasses.fields(CheckPart)] == [f.name for f in FIELDS] + ["status_mask"]
    assert [name for name, _ in _binding._BPF_BITS] == [f.name for f in dataclasses.fields(BPFPart)]
    bits = [bit for _, bit in _binding._CHECK_BITS]
    assert len(set(bits)) == len(bits) and all(b and b & (b - 1) == 0 for b in bits)


def test_every_set_field_reaches_the_c_check():
    plan = _everything().compile(KernelFeatures.none())
    uf = _binding._check_filter(plan.user)
    want = sum(bit for name, bit in _binding._CHECK_BITS if getattr(plan.user, name) is not None)
    assert uf.fields == want == sum(bit for _, bit in _binding._CHECK_BITS)
    assert (uf.sport_lo, uf.sport_hi, uf.dport_lo, uf.dport_hi) == (1000, 1000, 443, 443)
    assert (uf.mark_val, uf.mark_mask, uf.zone, uf.orig_zone, uf.reply_zone) == (0x10, 0xFF, 3, 2, 5)
    assert bytes(uf.orig_dst.addr[0:4]) == bytes([10, 1, 2, 3]) and bytes(uf.orig_dst.mask[0:4]) == b"\xff" * 4
    assert bytes(uf.reply_dst.mask[0:4]) == b"\xff\xff\x00\x00"
    assert (uf.any_nat.has_addr, uf.any_nat.has_port, uf.any_nat.port) == (1, 1, 53)
    assert (uf.dst_nat.has_addr, uf.dst_nat.has_port) == (0, 0)
    assert _binding._check_filter(plan.user) is uf  # cached by value


def test_the_kernel_part_becomes_ctpy_kfilter():
    lib = _binding.lib
    assert _binding._kernel_filter(KernelPart(family=Filter(family="ipv6").family)) == _binding.ffi.NULL
    part = KernelPart(mark=(1, 3), status=(0, 2), zone=7,
                      orig=TuplePart(proto=Filter(proto="udp").proto, dst=ipaddress.ip_address("10.0.0.1"),
                                     dport=53),
                      reply=TuplePart(src=ipaddress.ip_address("10.0.0.2")))
    k = _binding._kernel_filter(part)
    assert k.fields == lib.CTPY_K_MARK | lib.CTPY_K_STATUS | lib.CTPY_K_ZONE | lib.CTPY_K_TUPLE
    assert (k.mark_val, k.mark_mask, k.status_val, k.status_mask, k.zone) == (1, 3, 0, 2, 7)
    assert k.orig_flags == lib.CTPY_CTA_PROTO_NUM | lib.CTPY_CTA_IP_DST | lib.CTPY_CTA_DST_PORT
    assert (k.orig.proto, k.orig.dport, bytes(k.orig.dst[0:4])) == (17, 53, bytes([10, 0, 0, 1]))
    assert k.reply_flags == lib.CTPY_CTA_IP_SRC


def test_kernel_capable_fields_are_the_ones_a_flush_can_rely_on():
    """Only fields with a carrier can ever make a filtered flush; the C-only ones never."""
    everything = PROFILES[-1]
    for f in FIELDS:
        kw = {f.name: SAMPLES[f.name]}
        if f.carrier is TUPLE:  # in the forms the kernel compares: the family known, exact parts
            kw.update(family="ipv4", proto="udp")
            if f.name in ("src", "dst", "reply_src", "reply_dst"):
                kw[f.name] = "10.1.2.3"
            if f.name in ("sport", "dport"):
                kw[f.name] = 1000
        plan = Filter(**kw).compile(everything)
        assert plan.flush_ok == (f.carrier is not None), (f.name, plan.explain())


def test_nat_matches_print_as_conntrack_spells_them():
    assert [str(NatMatch()), str(Filter(src_nat="[2001:db8::1]:80").src_nat), str(Filter(dst_nat=":53").dst_nat)] == [
        "any", "[2001:db8::1]:80", ":53"]


def test_labels_as_text_are_bit_numbers_never_characters():
    """``"12"`` is bit 12 (read per character it was bits 1 and 2: a delete by it took other entries)."""
    assert Filter(labels="12") == Filter(labels=[12]) != Filter(labels=[1, 2])
    assert Filter(labels="1, 5") == Filter(labels=[1, 5])
    with pytest.raises(InvalidValue) as bad:
        Filter(labels="12,x")
    assert bad.value.field == "labels"


def test_an_address_against_a_nat_part_of_another_family_names_the_address():
    for nat in ("src_nat", "dst_nat", "any_nat"):
        with pytest.raises(InvalidValue) as bad:
            Filter(src="10.0.0.1", **{nat: "[::1]:80"})
        assert bad.value.field == "src"
