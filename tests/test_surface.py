"""The public surface: exported exceptions, ``__version__``, and errors that
name their field.  Plain Python: no kernel, no root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from importlib import metadata
from pathlib import Path

import pytest

import conntrack
from conntrack import Filter, Flow, InvalidType, InvalidValue, cli

CLI_ONLY = {"conntrack.cli.UsageError"}  # turned into exit status 2 inside main(); never escapes it


def _package_exceptions() -> set:
    found = set()
    for info in pkgutil.iter_modules(conntrack.__path__, "conntrack."):
        if info.name == "conntrack.__main__":  # runs the command line on import
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found.add(obj)
    return found


def test_every_exception_and_warning_is_exported() -> None:
    classes = {c for c in _package_exceptions() if "%s.%s" % (c.__module__, c.__qualname__) not in CLI_ONLY}
    assert {"NotLoaded", "ReadOnlyInNamespace", "MissingDependency", "InvalidValue"} <= {c.__name__ for c in classes}
    missing = sorted(c.__name__ for c in classes if getattr(conntrack, c.__name__, None) is not c
                     or c.__name__ not in conntrack.__all__)
    assert missing == []


def test_all_names_exist() -> None:
    for name in conntrack.__all__:
        assert getattr(conntrack, name) is not None, name


def test_version_from_metadata_or_pyproject() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pyproject = re.search(r'(?m)^version = "([^"]+)"$', text).group(1)  # type: ignore[union-attr]
    try:
        expected = metadata.version("pyconntrack")
    except metadata.PackageNotFoundError:
        expected = pyproject
    assert conntrack.__version__ == expected
    assert conntrack.__version__ == pyproject  # the fallback string kept in step with pyproject.toml


@pytest.mark.parametrize("make, field, says", [
    (lambda: Filter(dport=70000), "dport", "dport: 70000 is out of range 0..65535"),
    (lambda: Filter(sport="1-x"), "sport", "sport: 'x' is not a number"),
    (lambda: Filter(src="nope"), "src", "src: 'nope' is not an address or CIDR network"),
    (lambda: Filter(reply_dst="10.0.0.0/8", family="ipv6"), "reply_dst", "is not in family ipv6"),
    (lambda: Filter(state="NOPE"), "state", "state: unknown name 'NOPE'"),
    (lambda: Filter(proto="nope"), "proto", "proto: unknown protocol 'nope'"),
    (lambda: Filter(family="ipx"), "family", "family: unknown name 'ipx'"),
    (lambda: Filter(status="NOPE"), "status", "status: unknown status bit 'NOPE'"),
    (lambda: Filter(mark="1/x"), "mark", "mark mask: 'x' is not a number"),
    (lambda: Filter(mark="0x10/0xf"), "mark", "outside the mask"),
    (lambda: Filter(src_nat="10.0.0.1:99999"), "src_nat", "src_nat port: 99999 is out of range"),
    (lambda: Filter(labels=[128]), "labels", "labels: 128 is out of range 0..127"),
    (lambda: Flow(proto="udp", src="10.0.0.1", dst="10.0.0.2", sport=1, dport=2, timeout=30, mark=-1),
     "mark", "mark: -1 is out of range 0..4294967295"),
    (lambda: Flow(proto="udp", src="10.0.0.1", dst="nope", sport=1, dport=2, timeout=30),
     "dst", "dst: 'nope' is not an IPv4 or IPv6 address"),
])
def test_bad_value_names_its_field(make, field: str, says: str) -> None:
    with pytest.raises(InvalidValue) as info:
        make()
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert says in str(info.value)
    assert str(info.value).startswith(field)


def test_bad_type_names_its_field() -> None:
    with pytest.raises(InvalidType) as info:
        Filter(unreplied=1)
    assert info.value.field == "unreplied" and isinstance(info.value, TypeError)
    with pytest.raises(InvalidType) as info:
        Filter(dport=1.5)
    assert info.value.field == "dport"


@pytest.mark.parametrize("argv, says", [
    (["explain", "--dport", "70000"], "--dport: 70000 is out of range 0..65535"),
    (["explain", "--src", "nope"], "--src: 'nope' is not an address or CIDR network"),
    (["explain", "--mark", "1/x"], "--mark mask: 'x' is not a number"),
    (["explain", "--state", "NOPE"], "--state: unknown name 'NOPE'"),
    (["explain", "--reply-src", "10.0.0.0/8", "--family", "ipv6"], "--reply-src: 10.0.0.0/8 is not in family"),
])
def test_cli_message_names_the_option(argv, says: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err, err


def test_only_the_binding_imports_the_compiled_module() -> None:
    """The layering rule of docs/architecture.rst: ``_binding`` is the one
    module that imports ``ffi``/``lib``; everything above it is plain Python."""
    import ast

    importers = []
    for path in sorted(Path(conntrack.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "_nfct" or n.endswith("._nfct") for n in names):
                importers.append(path.name)
    assert importers == ["_binding.py"]
