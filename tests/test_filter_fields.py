"""Every Filter field is carried wherever a filter is rebuilt or judged (no root needed)."""

from __future__ import annotations

import dataclasses

import pytest

from conntrack import Filter
from conntrack.table import _filter_kwargs

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


def test_every_field_has_a_sample():
    assert set(SAMPLES) == {f.name for f in dataclasses.fields(Filter)}


@pytest.mark.parametrize("name", sorted(set(SAMPLES) - {"family"}))
def test_adding_a_family_keeps_every_field(name):
    flt = Filter(**{name: SAMPLES[name]})
    rebuilt = Filter(family="ipv4", **_filter_kwargs(flt))
    assert rebuilt.family is not None
    assert getattr(rebuilt, name) == getattr(flt, name) is not None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_set_field_restricts(name):
    assert not Filter(**{name: SAMPLES[name]}).matches_everything


@pytest.mark.parametrize("keywords", [{}, {"mark": "0/0"}, {"status": 0}, {"status": []}, {"labels": []},
                                      {"labels": 0}, {"proto": None, "src": None}])
def test_empty_forms_match_everything(keywords):
    assert Filter(**keywords).matches_everything
