"""`make demo` stays true: the demo runs and says what the user's note asks."""

from __future__ import annotations

import os
import re
import subprocess
import sys

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "demo.py")


def test_demo_runs_and_reports(netns):  # netns: only for the root check and CI's kernel-test rule
    out = subprocess.run([sys.executable, DEMO], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"table usage: 4002 of \d+ entries", text)
    assert "health: ok" in text
    assert re.search(r"tcp +6 \d+ ESTABLISHED src=127\.0\.0\.1 .*\[ASSURED\]", text)
    assert "UNREPLIED flows: 2001" in text
    assert "deleted 2001 UNREPLIED flows" in text
    assert "left: 2001 entries, 0 UNREPLIED" in text
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "ctdemo-" not in leftover


def test_demo_shows_why_ip_netns_failed(netns):
    # a real failure of `ip netns add`: /run/netns read-only in a private mount namespace
    os.makedirs("/run/netns", exist_ok=True)
    script = "mount -t tmpfs -o ro tmpfs /run/netns && exec \"$0\" \"$1\""
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          sys.executable, DEMO], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "`ip netns add ctdemo-" in out.stderr
    assert "Read-only file system" in out.stderr, out.stderr
