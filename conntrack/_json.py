"""The package's one JSON convention, used by every public result's ``to_dict()``.

``to_dict()`` returns plain values that :func:`json.dumps` takes as they are:

- keys are the attribute names (plus a few derived numbers, such as
  ``free`` next to ``count`` and ``max``); a value that is not known is
  ``None``, never a left-out key (a :class:`~conntrack.FlowTuple` leaves
  out the port or ICMP fields its protocol does not have);
- an enum member is its ``str()``, the word conntrack(8) prints
  (``"tcp"``, ``"ipv4"``, ``"ESTABLISHED"``, ``"NEW"``, ``"ok"``); a set of
  flags (:class:`~conntrack.Status`) is the list of its bit names;
- an address or network is its text (``"10.0.0.1"``, ``"10.0.0.0/24"``);
- a time is ISO 8601 text with its UTC offset;
- a tuple, list or set is a list (a set sorted), a mapping a dict
  (enum keys as their ``str()``), a named tuple a dict.

The CLI's ``--json`` output is these dicts, one a line.
"""

from __future__ import annotations

import datetime as _dt
import enum
import ipaddress
from typing import Any, Callable, Dict, List, Mapping, Tuple

_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network)


def _same(value: Any) -> Any:
    return value


def _flag_names(value: enum.Flag) -> List[str]:
    key = (type(value), int(value))  # type: ignore[call-overload]
    names = _FLAG_NAMES.get(key)
    if names is None:
        names = _FLAG_NAMES[key] = [m.name for m in type(value) if m & value and m.name]
    return list(names)


_FLAG_NAMES: Dict[Tuple[type, int], List[str]] = {}

# How to convert a value, by its exact type (filled in as types are met: a flow's
# few dozen values take one dict lookup each).
_BY_TYPE: Dict[type, Callable[[Any], Any]] = {
    type(None): _same, bool: _same, int: _same, str: _same, float: _same,
    ipaddress.IPv4Address: str, ipaddress.IPv6Address: str, ipaddress.IPv4Network: str, ipaddress.IPv6Network: str,
    _dt.datetime: _dt.datetime.isoformat,
}


def plain(value: Any) -> Any:
    """*value* as a JSON-ready value by the rules above."""
    convert = _BY_TYPE.get(type(value))
    if convert is None:
        convert = _BY_TYPE[type(value)] = _converter(value)
    return convert(value)


def _converter(value: Any) -> Callable[[Any], Any]:
    """The conversion for *value*'s type (which is not in the table yet)."""
    if isinstance(value, enum.Flag):
        return _flag_names
    if isinstance(value, enum.Enum):
        return str
    if hasattr(value, "to_dict"):
        return lambda v: v.to_dict()
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return lambda v: plain_dict(v._asdict())
    if isinstance(value, Mapping):
        return plain_dict
    if isinstance(value, (set, frozenset)):
        return lambda v: sorted(plain(x) for x in v)
    if isinstance(value, (list, tuple)):
        return lambda v: [plain(x) for x in v]
    for base, convert in ((bool, bool), (int, int), (str, str), (float, float), (_dt.datetime, _dt.datetime.isoformat)):
        if isinstance(value, base):  # a subclass of a plain type: the plain value
            return convert
    if isinstance(value, _ADDRESS_TYPES):
        return str
    raise TypeError("no JSON form for %r" % (value,))


def plain_dict(mapping: Mapping[Any, Any]) -> Dict[str, Any]:
    """A mapping with its keys as text (enum members by their ``str()``) and its values plain."""
    return {k if type(k) is str else str(k): plain(v) for k, v in mapping.items()}
