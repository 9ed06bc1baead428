"""The command line: ``pyconntrack`` (or ``python -m conntrack``).

::

    pyconntrack list [FILTER...] [--json]       # conntrack -L, one flow a line
    pyconntrack count [FILTER...]               # one number, counted in the kernel and C
    pyconntrack summary [FILTER...] [--json]    # totals by protocol, TCP state, status
    pyconntrack delete FILTER... [--dry-run]    # refuses without a filter unless --all
    pyconntrack explain FILTER...               # what runs in the kernel, what in C
    pyconntrack limits [--json]                 # nf_conntrack_max, count, fill, buckets, timeouts
    pyconntrack set-max N [--persist]           # sysctl -w with checks
    pyconntrack health [--interval S] [--json]  # exit 0 ok, 1 warning, 2 critical, 3 unknown

Every command takes ``--netns NAME|PATH``.  Only ``delete`` (without
``--dry-run``) and ``set-max`` change anything.

Exit status: 0 success; 2 a usage error or a bad value (the message names
the option); 1 the kernel or the system refused (for example no
CAP_NET_ADMIN).  ``health`` exits with its verdict instead (0 ok, 1
warning, 2 critical) and 3 when it cannot judge (any error, a usage error
included), as monitoring plugins do.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO

from . import health as _health
from . import sysctl
from ._binding import nfct_version
from .errors import BulkDeleteError, ConntrackError
from .features import KernelFeatures
from .filter import Filter
from .flow import Flow
from .netns import resolve
from .table import Conntrack, DeleteResult, Summary

EXIT_OK = 0
EXIT_FAILURE = 1
"""The kernel or the system refused (permissions, a missing namespace, nf_conntrack not loaded)."""
EXIT_USAGE = 2
"""A usage error or a bad value."""
EXIT_UNKNOWN = 3
"""``health`` only: no verdict (an error)."""
HEALTH_EXIT = {_health.Verdict.ok: 0, _health.Verdict.warning: 1, _health.Verdict.critical: 2}
"""``health``'s exit status per verdict."""

KEY_TIMEOUTS = (
    "tcp_timeout_established", "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_fin_wait",
    "tcp_timeout_close_wait", "tcp_timeout_time_wait", "udp_timeout", "udp_timeout_stream",
    "icmp_timeout", "generic_timeout",
)
"""The timeouts ``limits`` shows in text (``--json`` has them all)."""

# Library field names (as they open a ValueError's message) -> the option that set them.
_OPTION_OF = {
    "family": "--family", "proto": "--proto", "src": "--src", "dst": "--dst",
    "reply_src": "--reply-src", "reply_dst": "--reply-dst", "sport": "--sport", "dport": "--dport",
    "state": "--state", "status": "--status", "mark": "--mark", "zone": "--zone", "labels": "--label",
    "interval": "--interval", "max": "N",
}
_FIELD_RE = re.compile(r"^([a-z_]+)((?: mask)?): ")


class UsageError(Exception):
    """A bad value on the command line (exit 2)."""


# -- output helpers ------------------------------------------------------------------------


def _err(prog: str, message: str) -> None:
    print("%s: %s" % (prog, message), file=sys.stderr)


def _json_line(out: TextIO, obj: Any) -> None:
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")


def _message(exc: BaseException) -> str:
    """One line for an expected error, naming the option when a library field is named."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename and not isinstance(exc, ConntrackError) and str(exc.filename) not in text:
            text = "%s: %s" % (exc.filename, text)
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, (ValueError, TypeError, UsageError)):
        m = _FIELD_RE.match(text)
        if m and m.group(1) in _OPTION_OF:
            text = "%s%s: %s" % (_OPTION_OF[m.group(1)], m.group(2), text[m.end():])
    return " ".join(text.split())  # one line


# -- the filter options ------------------------------------------------------------------------


_FILTER_DESTS = ("family", "proto", "src", "dst", "reply_src", "reply_dst", "sport", "dport", "state",
                 "status", "unreplied", "assured", "snat", "dnat", "mark", "zone", "labels")


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filter (every option given must match)")
    g.add_argument("--family", metavar="ipv4|ipv6", help="address family")
    g.add_argument("-p", "--proto", metavar="PROTO", help="layer-4 protocol: tcp, udp, icmp, sctp, ... or a number")
    g.add_argument("-s", "--src", metavar="ADDR[/LEN]", help="original source address or CIDR network")
    g.add_argument("-d", "--dst", metavar="ADDR[/LEN]", help="original destination address or CIDR network")
    g.add_argument("--reply-src", metavar="ADDR[/LEN]", help="reply source address or CIDR network")
    g.add_argument("--reply-dst", metavar="ADDR[/LEN]", help="reply destination address or CIDR network")
    g.add_argument("--sport", metavar="PORT|LO-HI", help="original source port or range")
    g.add_argument("--dport", metavar="PORT|LO-HI", help="original destination port or range")
    g.add_argument("--state", action="append", metavar="STATE[,STATE...]",
                   help="connection state, e.g. ESTABLISHED (TCP unless --proto says otherwise); "
                        "repeat or separate with commas for any of several")
    g.add_argument("--status", metavar="BIT[,BIT...]", help="status bits that must all be set, e.g. ASSURED,SEEN_REPLY")
    reply = g.add_mutually_exclusive_group()
    reply.add_argument("--unreplied", dest="unreplied", action="store_const", const=True,
                       help="only entries that never saw a reply ([UNREPLIED])")
    reply.add_argument("--replied", dest="unreplied", action="store_const", const=False,
                       help="only entries that saw a reply")
    g.add_argument("--assured", action=argparse.BooleanOptionalAction, help="only (or, with --no-, no) ASSURED entries")
    g.add_argument("--snat", action=argparse.BooleanOptionalAction, help="only (or no) source-NATed entries")
    g.add_argument("--dnat", action=argparse.BooleanOptionalAction, help="only (or no) destination-NATed entries")
    g.add_argument("--mark", metavar="VALUE[/MASK]", help="connection mark, e.g. 0x10/0xff")
    g.add_argument("--zone", metavar="ZONE", help="conntrack zone")
    g.add_argument("--label", dest="labels", action="append", metavar="BIT",
                   help="connection label bit that must be set (repeatable)")


def _filter_keywords(args: argparse.Namespace) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    for name in _FILTER_DESTS:
        value = getattr(args, name, None)
        if value is not None:
            kw[name] = value
    if "state" in kw:
        kw["state"] = [s for item in kw["state"] for s in item.split(",") if s.strip()]
        if not kw["state"]:
            raise UsageError("--state: give at least one state")
    return kw


def _filter(args: argparse.Namespace) -> Optional[Filter]:
    """The Filter the options describe (None when none was given); bad values raise before any I/O."""
    kw = _filter_keywords(args)
    return Filter(**kw) if kw else None


# -- commands ----------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> Conntrack:
    return Conntrack(args.netns)


def _write_flows(out: TextIO, flows: Iterable[Flow], as_json: bool) -> int:
    n = 0
    if as_json:
        for f in flows:
            _json_line(out, f.to_dict())
            n += 1
    else:
        write = out.write
        for f in flows:
            write("%s\n" % f)
            n += 1
    return n


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    with _open(args) as ct:
        _write_flows(out, ct.dump(flt), args.json)
    return EXIT_OK


def cmd_count(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    with _open(args) as ct:
        out.write("%d\n" % ct.count(flt))
    return EXIT_OK


def summary_dict(s: Summary) -> Dict[str, Any]:
    """A :class:`~conntrack.Summary` as JSON-ready values."""
    return {
        "total": s.total, "unreplied": s.unreplied, "assured": s.assured,
        "by_proto": {p.name: n for p, n in sorted(s.by_proto.items(), key=lambda i: (-i[1], i[0].name))},
        "tcp_states": {t.name: n for t, n in sorted(s.tcp_states.items(), key=lambda i: (-i[1], i[0].name))},
    }


def cmd_summary(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    with _open(args) as ct:
        s = ct.summary(flt)
    d = summary_dict(s)
    if args.json:
        _json_line(out, d)
        return EXIT_OK
    out.write("%s, %d UNREPLIED, %d ASSURED\n" % (_entries(s.total), s.unreplied, s.assured))
    for name, n in d["by_proto"].items():
        out.write("%8d  %s\n" % (n, name))
    for name, n in d["tcp_states"].items():
        out.write("%8d  tcp %s\n" % (n, name))
    return EXIT_OK


def delete_dict(r: DeleteResult) -> Dict[str, Any]:
    """A :class:`~conntrack.DeleteResult` as JSON-ready values."""
    d: Dict[str, Any] = {"deleted": r.deleted, "vanished": r.vanished, "method": r.method,
                         "exact": r.exact, "dry_run": r.dry_run}
    if r.dry_run:
        d["matched"] = [f.to_dict() for f in r.matched]
    return d


def _entries(n: int) -> str:
    return "%d %s" % (n, "entry" if n == 1 else "entries")


def _delete_text(r: DeleteResult) -> str:
    text = "deleted %s by %s, %d vanished" % (_entries(r.deleted), r.method, r.vanished)
    if not r.exact:
        text += " (counted from the table's entry counter: a filtered flush reports no count)"
    return text


def _matches_everything(flt: Filter) -> bool:
    """True when the filter restricts nothing (``--status ''``, ``--mark X/0``)."""
    user = dict(flt.compile(KernelFeatures.none()).user)
    if user.get("mark", (0, 1))[1] == 0:
        del user["mark"]
    return not user


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    if flt is not None and _matches_everything(flt):
        if not args.all:
            raise UsageError("delete: the filter options given match every entry; "
                             "give --all (and no filter) to delete every entry")
        flt = None
    if flt is None and not args.all:
        raise UsageError("delete: refusing to delete without a filter; give filter options "
                         "(see --help), or --all to delete every entry")
    if flt is not None and args.all:
        raise UsageError("--all: means every entry; leave it out to delete what the filter options match")
    with _open(args) as ct:
        try:
            r = ct.delete(flt if flt is not None else Filter(), dry_run=args.dry_run)
        except BulkDeleteError as exc:
            if args.json:
                _json_line(out, delete_dict(exc.result))
            else:
                out.write(_delete_text(exc.result) + " before stopping\n")
            raise
    if args.json:
        _json_line(out, delete_dict(r))
    elif r.dry_run:
        _write_flows(out, r.matched, False)
        out.write("dry run: %s would be deleted by %s; nothing was deleted\n" % (_entries(len(r.matched)), r.method))
    else:
        out.write(_delete_text(r) + "\n")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args) or Filter()
    if args.netns is not None:
        fd = resolve(args.netns)  # the namespace must exist; its table is not read
        if fd is not None:
            os.close(fd)
    out.write(flt.explain(KernelFeatures.default()) + "\n")
    return EXIT_OK


def limits_dict(s: sysctl.Settings) -> Dict[str, Any]:
    """What ``limits --json`` prints."""
    return {
        "max": s.max, "count": s.count, "fill": s.fill, "free": max(s.max - s.count, 0),
        "buckets": s.buckets, "hashsize": s.hashsize, "expect_max": s.expect_max,
        "memory_full_bytes": s.max * sysctl.BYTES_PER_ENTRY,
        "timeouts": dict(s.timeouts),
        "acct": s.acct, "timestamp": s.timestamp, "events": s.events, "checksum": s.checksum,
        "tcp_loose": s.tcp_loose, "tcp_be_liberal": s.tcp_be_liberal,
    }


def cmd_limits(args: argparse.Namespace, out: TextIO) -> int:
    s = sysctl.read(netns=args.netns)
    d = limits_dict(s)
    if args.json:
        _json_line(out, d)
        return EXIT_OK
    rows = [
        ("nf_conntrack_max", "%d (about %d MiB of kernel memory when full)"
         % (s.max, d["memory_full_bytes"] // 2**20)),
        ("nf_conntrack_count", "%d (%.1f%% full, %d free)" % (s.count, 100 * s.fill, d["free"])),
        ("nf_conntrack_buckets", "%d" % s.buckets),
        ("nf_conntrack_expect_max", "%d" % s.expect_max),
    ]
    rows += [("nf_conntrack_" + name, "%d s" % s.timeouts[name]) for name in KEY_TIMEOUTS if name in s.timeouts]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.write("%-*s  %s\n" % (width, name, value))
    return EXIT_OK


def cmd_set_max(args: argparse.Namespace, out: TextIO) -> int:
    n: int = args.n
    if not 1 <= n <= sysctl.MAX_LIMIT:
        raise UsageError("N: %d is out of the kernel's range 1..%d" % (n, sysctl.MAX_LIMIT))
    if not args.force:
        now = sysctl.usage(netns=args.netns)
        if n < now.count:
            raise UsageError("N: %d is below the %d entries in the table now; new flows would be dropped "
                             "until enough expire (--force to do it anyway)" % (n, now.count))
    caught: List[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # type: ignore[assignment]
            warnings.simplefilter("always")
            previous = sysctl.set_max(n, persist=args.persist, netns=args.netns)
    finally:
        for w in caught:
            _err(args.prog, "warning: %s" % " ".join(str(w.message).split()))
    text = "nf_conntrack_max: %d -> %d" % (previous, n)
    if args.persist:
        text += ", kept in %s" % os.path.join("/", sysctl.DROPIN_DIR, sysctl.DEFAULT_DROPIN)
    out.write(text + "\n")
    return EXIT_OK


def cmd_health(args: argparse.Namespace, out: TextIO) -> int:
    if not 0 <= args.interval <= 3600:  # NaN and inf too: time.sleep() cannot take them
        raise UsageError("--interval: expected seconds 0..3600, got %r" % args.interval)
    if args.since is not None and not args.since >= 0:
        raise UsageError("--since: expected seconds >= 0, got %r" % args.since)
    since = time.time() - args.since if args.since is not None else None
    with _open(args) as ct:
        h = _health.health(ct, since=since, interval=args.interval)
    if args.json:
        _json_line(out, _health.as_dict(h))
    else:
        out.write("%s\n" % h)
    return HEALTH_EXIT[h.verdict]


# -- the parser --------------------------------------------------------------------------------


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="The Linux conntrack table: list, count, summarize and delete entries, "
                    "read and raise its limit, judge its health.",
        epilog="Exit status: 0 success, 1 refused by the kernel or the system, 2 bad usage or value; "
               "health: 0 ok, 1 warning, 2 critical, 3 unknown (an error). "
               "Only delete (without --dry-run) and set-max change anything.",
    )
    ap.add_argument("--version", action="version",
                    version="pyconntrack %s (libnetfilter_conntrack %s)" % (_version(), nfct_version()))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--netns", metavar="NAME|PATH",
                        help="network namespace: a name under /run/netns or a path such as /proc/PID/ns/net "
                             "(default: this process's)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, fn: Callable[[argparse.Namespace, TextIO], int], help: str,
            parents: Sequence[argparse.ArgumentParser] = (), filters: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common, *parents])
        if filters:
            _add_filter_options(p)
        p.set_defaults(fn=fn)
        return p

    p = add("list", cmd_list, "print the entries that match, one a line in conntrack -L's format "
            "(--json: one JSON object a line)", [as_json], True)
    add("count", cmd_count, "print how many entries match (counted in the kernel and C)", filters=True)
    add("summary", cmd_summary, "totals of the entries that match: by protocol, TCP state, "
        "UNREPLIED and ASSURED", [as_json], True)
    p = add("delete", cmd_delete, "delete the entries that match; refuses without a filter unless --all",
            [as_json], True)
    p.add_argument("--dry-run", action="store_true", help="delete nothing; list what would be deleted")
    p.add_argument("--all", action="store_true", help="with no filter: delete every entry of the table")
    add("explain", cmd_explain, "say which parts of the filter run in the kernel and which in C, "
        "and how a delete would run", filters=True)
    add("limits", cmd_limits, "nf_conntrack_max, entries, fill, buckets and the main timeouts", [as_json])
    p = add("set-max", cmd_set_max, "set nf_conntrack_max (host namespace only); prints the previous value")
    p.add_argument("n", metavar="N", type=_int, help="the new limit (1..%d)" % sysctl.MAX_LIMIT)
    p.add_argument("--persist", action="store_true",
                   help="also keep it at boot in /etc/sysctl.d/%s" % sysctl.DEFAULT_DROPIN)
    p.add_argument("--force", action="store_true", help="allow a limit below the current number of entries")
    p = add("health", cmd_health, "verdict on the table's fill and drops; exit 0 ok, 1 warning, 2 critical, "
            "3 unknown", [as_json])
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between the two samples the drop rates come from (default 1; 0: no rates)")
    p.add_argument("--since", type=float, metavar="SECONDS",
                   help="also count 'table full' kernel messages from the last SECONDS "
                        "(default: only those between the two samples)")
    return ap


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text) from None


def _version() -> str:
    from . import __version__
    return __version__


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m conntrack" if name in ("", "__main__.py", "-c") else name


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    prog = _prog()
    is_health = bool(args_list) and args_list[0] == "health"
    try:
        args = _parser(prog).parse_args(args_list)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return EXIT_UNKNOWN if is_health and code != 0 else code
    args.prog = prog
    failure = EXIT_UNKNOWN if is_health else EXIT_FAILURE
    usage = EXIT_UNKNOWN if is_health else EXIT_USAGE
    try:
        status = int(args.fn(args, sys.stdout))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except (UsageError, ValueError, TypeError) as exc:
        _err(prog, _message(exc))
        return usage
    except BulkDeleteError as exc:
        _err(prog, _message(exc))
        return failure
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, as conntrack -L does on SIGPIPE
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 128 + signal.SIGPIPE
    except (OSError, ConntrackError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            return 128 + signal.SIGPIPE
        _err(prog, _message(exc))
        return failure
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: say so in one line, and never pass for a health verdict
        _err(prog, "internal error: %s: %s" % (type(exc).__name__, _message(exc)))
        return failure


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
