"""The command line: ``pyconntrack`` (or ``python -m conntrack``).

::

    pyconntrack list [FILTER...] [--json]       # conntrack -L, one flow a line
    pyconntrack count [FILTER...]               # one number, counted in the kernel and C
    pyconntrack summary [FILTER...] [--json]    # totals by protocol, TCP state, status
    pyconntrack top [--by src] [FILTER...]      # the most frequent sources (or other keys)
    pyconntrack delete FILTER... [--dry-run]    # refuses without a filter unless --all
    pyconntrack explain FILTER...               # what runs in the kernel, what in C
    pyconntrack limits [--json]                 # nf_conntrack_max, count, fill, buckets, timeouts
    pyconntrack set-max N [--persist]           # sysctl -w with checks
    pyconntrack health [--interval S] [--json]  # exit 0 ok, 1 warning, 2 critical, 3 unknown

    pyconntrack stats [--json]                  # conntrack -S: per-CPU statistics
    pyconntrack events [-e NEW,DESTROY] [FILTER...] [--json]   # conntrack -E
    pyconntrack limits --recommend              # a limit for this machine's RAM, with the reasoning
    pyconntrack set-hashsize N [--persist]      # resize the hash table
    pyconntrack set-timeout NAME SECONDS [--persist]

Every command takes ``--netns NAME|PATH`` and ``--quiet``, before or after
the command name.  conntrack(8)'s spellings work too: ``-L``, ``-C``,
``-S``, ``-D``, ``-E`` for list, count, stats, delete, events, and ``-f``,
``-p``, ``-s``, ``-d``, ``--sport``, ``--dport``, ``-m``, ``-u``, ``-w``,
``-o extended|json``.  Only ``delete`` (without ``--dry-run``),
``set-max``, ``set-hashsize`` and ``set-timeout`` change anything.

Exit status: 0 success; 2 a usage error or a bad value (the message names
the option); 1 the kernel or the system refused (for example no
CAP_NET_ADMIN).  ``health`` exits with its verdict instead (0 ok, 1
warning, 2 critical) and 3 when it cannot judge (any error, a usage error
included), as monitoring plugins do.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import stat
import sys
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO, Tuple

from . import health as _health
from . import sysctl
from . import top as _top
from ._binding import nfct_version
from .errors import BulkDeleteError, ConntrackError, DeleteInterrupted, MatchesEverything
from .events import EventType
from .features import KernelFeatures
from .filter import FIELDS, Filter
from .flow import Flow
from .netns import resolve
from .table import Conntrack, DeleteResult

EXIT_OK = 0
EXIT_FAILURE = 1
"""The kernel or the system refused (permissions, a missing namespace, nf_conntrack not loaded)."""
EXIT_USAGE = 2
"""A usage error or a bad value."""
EXIT_UNKNOWN = 3
"""``health`` only: no verdict (an error)."""
HEALTH_EXIT = {_health.Verdict.OK: 0, _health.Verdict.WARNING: 1, _health.Verdict.CRITICAL: 2}
"""``health``'s exit status per verdict."""

KEY_TIMEOUTS = (
    "tcp_timeout_established", "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_fin_wait",
    "tcp_timeout_close_wait", "tcp_timeout_time_wait", "udp_timeout", "udp_timeout_stream",
    "icmp_timeout", "generic_timeout",
)
"""The timeouts ``limits`` shows in text (``--json`` has them all)."""

# Library field names (an InvalidValue's ``field``) -> the option that set them.
_OPTION_OF = {
    **{f.name: f.options[0].flags[-1] for f in FIELDS},  # a Filter keyword: its (first) long option
    "interval": "--interval", "max": "N",
}


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
        # sysctl's errors carry no .field yet: their message opens with it ("max: ...")
        field = getattr(exc, "field", None) or text.partition(":")[0]
        if field in _OPTION_OF and text.startswith(field) and text[len(field):len(field) + 1] in (":", " "):
            text = _OPTION_OF[field] + text[len(field):]
    return " ".join(text.split())  # one line


# -- the filter options ------------------------------------------------------------------------


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    """One option (or a pair of exclusive ones) per Filter keyword, from the filter's FIELDS."""
    g = p.add_argument_group("filter (every option given must match)")
    for f in FIELDS:
        into = g.add_mutually_exclusive_group() if len(f.options) > 1 else g
        for opt in f.options:
            kw: Dict[str, Any] = {"dest": f.name, "help": opt.help}
            if opt.metavar is None:
                kw.update(action="store_const", const=opt.const)
            else:
                kw["metavar"] = opt.metavar
                if opt.const is not None:
                    kw.update(nargs="?", const=opt.const)
                if opt.repeat:
                    kw["action"] = "append"
            into.add_argument(*opt.flags, **kw)


def _filter_keywords(args: argparse.Namespace) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    for f in FIELDS:
        value = getattr(args, f.name, None)
        if value is not None:
            kw[f.name] = value
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


_NS_GET_NSTYPE = 0xB703  # ioctl(2) on a namespace file: its CLONE_NEW* type (Linux 4.11)
_NS_TYPES = {0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "UTS", 0x08000000: "IPC",
             0x10000000: "user", 0x20000000: "PID", 0x00000080: "time"}


def check_netns(spec: Optional[str]) -> None:
    """Refuse a ``--netns`` that does not exist or is not a network namespace, saying which.

    Without this the kernel's answers read as something else: setns(2)
    gives EINVAL ("Invalid argument") for a plain file, and opening another
    process's /proc/PID/ns/net can give EACCES, which reads as a missing
    CAP_NET_ADMIN.  A FIFO is never opened (opening one would block).
    """
    if spec is None:
        return
    path = spec if "/" in spec else os.path.join("/run/netns", spec)
    shown = spec if path == spec else "%s (%s)" % (spec, path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        hint = "; `ip netns list` shows the names" if path != spec else ""
        raise OSError(errno.ENOENT, "--netns %s: no such network namespace%s" % (shown, hint)) from None
    except OSError as exc:
        hint = (" (another process's namespace file needs ptrace access to that process)"
                if exc.errno in (errno.EACCES, errno.EPERM) and path.startswith("/proc/") else "")
        raise OSError(exc.errno, "--netns %s: %s%s" % (shown, exc.strerror, hint)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, "--netns %s: %s, not a network namespace (give a name under /run/netns "
                      "or a path such as /proc/PID/ns/net)" % (shown, kind))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, "--netns %s: cannot open the namespace file: %s" % (shown, exc.strerror)) from None
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise OSError(errno.EINVAL, "--netns %s: not a network namespace (give a name under /run/netns "
                          "or a path such as /proc/PID/ns/net)" % shown) from None
        return  # an older kernel without NS_GET_NSTYPE: let setns(2) judge
    finally:
        os.close(fd)
    if nstype != 0x40000000:  # CLONE_NEWNET
        raise OSError(errno.EINVAL, "--netns %s: a %s namespace, not a network namespace"
                      % (shown, _NS_TYPES.get(nstype, "different")))


class Progress:
    """One status line on standard error while long work runs.

    Shown only when standard error is a terminal and ``--quiet`` was not
    given; redrawn at most every ``interval`` seconds and erased at the end.
    """

    def __init__(self, args: argparse.Namespace, interval: float = 0.25) -> None:
        self.enabled = not args.quiet and _isatty(sys.stderr)
        self.interval = interval
        self.prog = args.prog
        self._next = time.monotonic() + interval
        self._start = time.monotonic()
        self._shown = False

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        self._next = time.monotonic() + self.interval
        sys.stderr.write("\r\033[K%s: %s (%.0f s)" % (self.prog, text, time.monotonic() - self._start))
        sys.stderr.flush()
        self._shown = True

    def end(self, text: Optional[str] = None) -> None:
        """Erase the line; with *text*, leave that as the last word on the terminal."""
        if not self.enabled:
            return
        sys.stderr.write("\r\033[K")
        if text is not None:
            sys.stderr.write("%s: %s in %.1f s\n" % (self.prog, text, time.monotonic() - self._start))
        sys.stderr.flush()

    def counting(self, items: Iterable[Flow], verb: str) -> Iterator[Flow]:
        """Pass *items* through, showing how many went by."""
        n = 0
        for item in items:
            n += 1
            if not n & 1023 and self.due():
                self.show("%s %d entries" % (verb, n))
            yield item
        self.end("%s %s" % (verb, _entries(n)))

    def watch_count(self, args: argparse.Namespace, text: str) -> Callable[[], None]:
        """Show the table's entry counter (its own handle, in a thread) until the returned stop() is called."""
        if not self.enabled:
            return lambda: None
        done = threading.Event()

        def run() -> None:
            try:
                with Conntrack(args.netns) as ct:
                    while not done.wait(self.interval):
                        self.show(text % ct.count())
            except (OSError, ConntrackError):
                return  # the progress line is a nicety: the command reports its own errors

        t = threading.Thread(target=run, name="pyconntrack-progress", daemon=True)
        t.start()

        def stop() -> None:
            done.set()
            t.join(2)
            self.end()

        return stop


def _isatty(f: TextIO) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


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


def _output(args: argparse.Namespace) -> Tuple[bool, bool]:
    """(as JSON, extended lines) from ``--json`` and conntrack(8)'s ``-o``."""
    as_json, extended = bool(getattr(args, "json", False)), False
    for item in getattr(args, "output", None) or []:
        for word in item.split(","):
            word = word.strip().lower()
            if word == "json":
                as_json = True
            elif word == "extended":
                extended = True
            elif word:
                raise UsageError("-o: %r is not an output format here (extended, json)" % word)
    return as_json, extended


def _extended(flows: Iterable[Flow]) -> Iterator[str]:
    """conntrack -o extended: each line led by the family's name and number."""
    for f in flows:
        yield "%-8s %d %s" % (f.family.name, f.family, f)


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    as_json, extended = _output(args)
    with _open(args) as ct:
        flows: Iterable[Flow] = ct.dump(flt)
        progress = Progress(args)
        if not _isatty(out):  # a file or a pipe: the terminal shows progress
            flows = progress.counting(flows, "wrote")
        if extended and not as_json:
            for line in _extended(flows):
                out.write(line + "\n")
        else:
            _write_flows(out, flows, as_json)
    return EXIT_OK


def cmd_count(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    with _open(args) as ct:
        out.write("%d\n" % ct.count(flt))
    return EXIT_OK


def cmd_summary(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    with _open(args) as ct:
        s = ct.summary(flt)
    d = s.to_dict()
    if args.json:
        _json_line(out, d)
        return EXIT_OK
    out.write("%s, %d UNREPLIED, %d ASSURED\n" % (_entries(s.total), s.unreplied, s.assured))
    for name, n in d["by_proto"].items():
        out.write("%8d  %s\n" % (n, name))
    for name, n in d["tcp_states"].items():
        out.write("%8d  tcp %s\n" % (n, name))
    return EXIT_OK


def cmd_top(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    by = [part for item in args.by for part in item.split(",") if part.strip()] or ["src"]
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit: expected a positive number of keys, got %d" % args.limit)
    try:
        _top.parse_by(by)
    except ValueError as exc:
        raise UsageError("--by: %s" % str(exc).split(": ", 1)[1]) from None
    with _open(args) as ct:
        t = ct.top(by if len(by) > 1 else by[0], args.limit, flt)
    if args.json:
        _json_line(out, t.to_dict())
        return EXIT_OK
    for key, n in t:
        out.write("%8d  %s\n" % (n, _top.key_text(key)))
    out.write("%s matched, %d distinct %s\n" % (_entries(t.total), t.distinct, ",".join(t.by)))
    return EXIT_OK


def _entries(n: int) -> str:
    return "%d %s" % (n, "entry" if n == 1 else "entries")


def _delete_text(r: DeleteResult) -> str:
    text = "deleted %s by %s, %d vanished" % (_entries(r.deleted), r.method, r.vanished)
    if r.interrupted:
        text += " (the kernel flagged the dump as interrupted: matching entries may remain)"
    elif not r.exact:
        text += " (counted from the table's entry counter: a filtered flush reports no count)"
    return text


def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    if flt is None and not args.all:
        raise UsageError("delete: refusing to delete without a filter; give filter options "
                         "(see --help), or --all to delete every entry")
    if flt is not None and args.all:
        raise UsageError("--all: means every entry; leave it out to delete what the filter options match")
    with _open(args) as ct:
        try:
            r = ct.delete(flt if flt is not None else Filter(), dry_run=args.dry_run, all=args.all)
        except MatchesEverything:  # the library decides; the CLI names its own option
            raise UsageError("delete: the filter options given match every entry; "
                             "give --all (and no filter) to delete every entry") from None
        except (BulkDeleteError, DeleteInterrupted) as exc:
            if args.json:
                _json_line(out, exc.result.to_dict())
            else:
                out.write(_delete_text(exc.result) + (" before Ctrl-C\n" if isinstance(exc, DeleteInterrupted) else " before stopping\n"))
            raise
    if args.json:
        _json_line(out, r.to_dict())
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


def cmd_limits(args: argparse.Namespace, out: TextIO) -> int:
    if args.recommend:
        return _recommend(args, out)
    s = sysctl.read(netns=args.netns)
    d = s.to_dict()
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
        text += _persist_text(args)
    out.write(text + "\n")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    with _open(args) as ct:
        rows = ct.stats()
    if args.json:
        _json_line(out, rows)
        return EXIT_OK
    for row in rows:  # conntrack -S's layout
        out.write("cpu=%-4d\t%s \n" % (row["cpu"], " ".join("%s=%d" % (k, v) for k, v in row.items() if k != "cpu")))
    return EXIT_OK


_EVENT_TAGS = {"NEW": "    [NEW] ", "UPDATE": " [UPDATE] ", "DESTROY": "[DESTROY] "}


def cmd_events(args: argparse.Namespace, out: TextIO) -> int:
    flt = _filter(args)
    as_json, extended = _output(args)
    types = EventType(0)
    for item in args.event or ["NEW,UPDATE,DESTROY"]:
        for word in item.split(","):
            word = word.strip().upper()
            if word not in _EVENT_TAGS:
                raise UsageError("-e: %r is not an event type (NEW, UPDATE, DESTROY)" % word)
            types |= EventType[word]
    with _open(args) as ct:
        for ev in ct.events(flt, types=types):
            if ev.flow is None:  # OVERFLOW
                _err(args.prog, "the kernel dropped %s events (receive buffer full); re-list for a whole view"
                     % ("some" if ev.lost is None else ev.lost))
            if as_json:
                _json_line(out, ev.to_dict())
            elif ev.flow is not None:
                prefix = "%-8s %d " % (ev.flow.family.name, ev.flow.family) if extended else ""
                out.write("%s%s%s\n" % (_EVENT_TAGS[str(ev.type)], prefix, ev.flow))
            out.flush()
    return EXIT_OK


def _recommend(args: argparse.Namespace, out: TextIO) -> int:
    rec = sysctl.recommend_max()
    if args.json:
        _json_line(out, rec.to_dict())
        return EXIT_OK
    out.write(rec.explanation + "\n")
    out.write("To apply now and at boot:\n  %s set-max %d --persist\n  %s set-hashsize %d --persist\n"
              % (args.prog, rec.value, args.prog, rec.buckets))
    return EXIT_OK


def _persist_text(args: argparse.Namespace) -> str:
    text = ", kept in %s" % os.path.join("/", sysctl.DROPIN_DIR, sysctl.DEFAULT_DROPIN)
    if sysctl.module_is_builtin():
        return text + " (nf_conntrack is built into this kernel: no module to load first)"
    return text + " (nf_conntrack is loaded before it at boot: %s)" % os.path.join("/", sysctl.MODULES_LOAD)


def _set_with_warnings(args: argparse.Namespace, fn: Callable[[], int]) -> int:
    caught: List[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # type: ignore[assignment]
            warnings.simplefilter("always")
            return fn()
    finally:
        for w in caught:
            _err(args.prog, "warning: %s" % " ".join(str(w.message).split()))


def cmd_set_hashsize(args: argparse.Namespace, out: TextIO) -> int:
    n: int = args.n
    if not 1 <= n <= sysctl.MAX_BUCKETS:
        raise UsageError("N: %d is out of the kernel's range 1..%d" % (n, sysctl.MAX_BUCKETS))
    previous = _set_with_warnings(args, lambda: sysctl.set_hashsize(n, persist=args.persist, netns=args.netns))
    out.write("nf_conntrack_buckets: %d -> %d%s\n" % (previous, n, _persist_text(args) if args.persist else ""))
    return EXIT_OK


def cmd_set_timeout(args: argparse.Namespace, out: TextIO) -> int:
    name = sysctl.timeout_name(args.name)
    seconds: int = args.seconds
    if not 1 <= seconds <= sysctl.MAX_TIMEOUT:
        raise UsageError("SECONDS: %d is out of range 1..%d" % (seconds, sysctl.MAX_TIMEOUT))
    previous = _set_with_warnings(
        args, lambda: sysctl.set_timeout(name, seconds, persist=args.persist, netns=args.netns))
    out.write("%s: %d -> %d s%s\n" % (name, previous, seconds, _persist_text(args) if args.persist else ""))
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
        _json_line(out, h.to_dict())
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
               "Only delete (without --dry-run), set-max, set-hashsize and set-timeout change anything.",
    )
    ap.add_argument("--version", action="version",
                    version="pyconntrack %s (libnetfilter_conntrack %s)" % (_version(), nfct_version()))
    common = argparse.ArgumentParser(add_help=False)
    for p in (ap, common):  # before or after the command; SUPPRESS: a value given before is kept
        p.add_argument("--netns", metavar="NAME|PATH", default=argparse.SUPPRESS,
                       help="network namespace: a name under /run/netns or a path such as /proc/PID/ns/net "
                            "(default: this process's)")
        p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress line on the terminal")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", action="append", metavar="extended|json",
                        help="conntrack(8)'s output formats: extended (lines led by the family), json")
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
            "(--json: one JSON object a line); conntrack -L", [as_json, output], True)
    add("count", cmd_count, "print how many entries match (counted in the kernel and C); conntrack -C",
        filters=True)
    add("stats", cmd_stats, "per-CPU statistics of the table (found, invalid, insert, insert_failed, drop, "
        "early_drop, ...); conntrack -S", [as_json])
    p = add("events", cmd_events, "print the table's events as they happen, one a line (--json: JSON "
            "lines) until interrupted; conntrack -E", [as_json, output], True)
    p.add_argument("-e", "--event", action="append", metavar="NEW,UPDATE,DESTROY",
                   help="event types to print (default: all)")
    add("summary", cmd_summary, "totals of the entries that match: by protocol, TCP state, "
        "UNREPLIED and ASSURED", [as_json], True)
    p = add("top", cmd_top, "who fills the table: the most frequent sources (or other keys) among the "
            "entries that match, counted in C during one dump", [as_json], True)
    p.add_argument("--by", action="append", default=[], metavar="FIELD[,FIELD...]",
                   help="what to group by: src, dst, src/24 (or src/64 for IPv6, src/24/64 for both), sport, "
                        "dport, proto, state, zone, mark, family; several (comma-separated or repeated) "
                        "group by their tuple (default: src)")
    p.add_argument("--limit", type=_int, default=20, metavar="N", help="how many keys to print (default 20)")
    p = add("delete", cmd_delete, "delete the entries that match; refuses without a filter unless --all",
            [as_json], True)
    p.add_argument("--dry-run", action="store_true", help="delete nothing; list what would be deleted")
    p.add_argument("--all", action="store_true", help="with no filter: delete every entry of the table")
    add("explain", cmd_explain, "say which parts of the filter run in the kernel and which in C, "
        "and how a delete would run", filters=True)
    p = add("limits", cmd_limits, "nf_conntrack_max, entries, fill, buckets and the main timeouts", [as_json])
    p.add_argument("--recommend", action="store_true",
                   help="instead: a limit and hash size for this machine's RAM, with the reasoning")
    p = add("set-max", cmd_set_max, "set nf_conntrack_max (host namespace only); prints the previous value")
    p.add_argument("n", metavar="N", type=_int, help="the new limit (1..%d)" % sysctl.MAX_LIMIT)
    p.add_argument("--persist", action="store_true",
                   help="also keep it at boot in /etc/sysctl.d/%s" % sysctl.DEFAULT_DROPIN)
    p.add_argument("--force", action="store_true", help="allow a limit below the current number of entries")
    p = add("set-hashsize", cmd_set_hashsize, "resize the hash table (nf_conntrack_buckets; host namespace "
            "only); prints the previous size")
    p.add_argument("n", metavar="N", type=_int, help="buckets (1..%d)" % sysctl.MAX_BUCKETS)
    p.add_argument("--persist", action="store_true",
                   help="also keep it at boot in /etc/sysctl.d/%s (and load nf_conntrack early when it is a "
                        "module)" % sysctl.DEFAULT_DROPIN)
    p = add("set-timeout", cmd_set_timeout, "set one nf_conntrack timeout (per namespace); prints the previous "
            "value")
    p.add_argument("name", metavar="NAME", help="e.g. tcp_timeout_established, udp_timeout "
                   "(the nf_conntrack_ prefix is optional)")
    p.add_argument("seconds", metavar="SECONDS", type=_int, help="the new timeout in seconds")
    p.add_argument("--persist", action="store_true",
                   help="also keep it at boot in /etc/sysctl.d/%s (host namespace)" % sysctl.DEFAULT_DROPIN)
    p = add("health", cmd_health, "verdict on the table's fill and drops; exit 0 ok, 1 warning, 2 critical, "
            "3 unknown", [as_json])
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between the two samples the drop rates come from (default 1; 0: no rates)")
    p.add_argument("--since", type=float, metavar="SECONDS",
                   help="also count 'table full' kernel messages from the last SECONDS "
                        "(default: only those between the two samples)")
    return ap


CONNTRACK8_COMMANDS = {"-L": "list", "--dump": "list", "-C": "count", "--count": "count",
                      "-S": "stats", "--stats": "stats", "-D": "delete", "--delete": "delete",
                      "-E": "events", "--event": "events"}
"""conntrack(8)'s command options and the subcommands they stand for."""


def conntrack8_command(argv: List[str]) -> List[str]:
    """Let ``pyconntrack -L -p tcp`` mean ``pyconntrack list -p tcp``, as in conntrack(8).

    The first conntrack(8) command option, wherever it stands, becomes the
    subcommand (the options around it follow it), unless a subcommand name
    came first.
    """
    names = set(CONNTRACK8_COMMANDS.values()) | {"summary", "top", "explain", "limits", "set-max",
                                                  "set-hashsize", "set-timeout", "health"}
    for i, word in enumerate(argv):
        if word in names:
            return argv
        if word in CONNTRACK8_COMMANDS:
            return [CONNTRACK8_COMMANDS[word], *argv[:i], *argv[i + 1:]]
    return argv


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
    args_list = conntrack8_command(list(sys.argv[1:] if argv is None else argv))
    prog = _prog()
    is_health = "health" in args_list
    try:
        args = _parser(prog).parse_args(args_list)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return EXIT_UNKNOWN if is_health and code != 0 else code
    is_health = args.command == "health"
    args.prog = prog
    args.netns = getattr(args, "netns", None)
    args.quiet = getattr(args, "quiet", False)
    failure = EXIT_UNKNOWN if is_health else EXIT_FAILURE
    usage = EXIT_UNKNOWN if is_health else EXIT_USAGE
    stop_progress: Callable[[], None] = lambda: None  # noqa: E731
    try:
        check_netns(args.netns)
        if args.command == "delete" and not args.dry_run:
            stop_progress = Progress(args).watch_count(args, "deleting: %d entries left in the table")
        try:
            status = int(args.fn(args, sys.stdout))
        finally:
            stop_progress()
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
