#!/usr/bin/env python3
"""One line for a test-kernels results folder (junit.xml, guest.log, wall, accel); --detail lists
what failed, errored or was skipped."""

import os
import re
import sys
import xml.etree.ElementTree as ET


def read(folder: str, name: str) -> str:
    try:
        with open(os.path.join(folder, name), errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def main(folder: str, detail: bool) -> int:
    kernel = read(folder, "uname") or os.path.basename(folder.rstrip("/"))
    log = read(folder, "guest.log")
    boot = re.search(r"userland up at uptime ([\d.]+)s", log)
    tests = re.search(r"pytest rc=\d+ in (\d+)s", log)
    how = "%s, boot %s, tests %s, wall %ss" % (read(folder, "accel") or "?",
                                              "%.1fs" % float(boot.group(1)) if boot else "none",
                                              tests.group(1) + "s" if tests else "?", read(folder, "wall") or "?")
    junit = os.path.join(folder, "junit.xml")
    if not os.path.exists(junit):
        tail = [line.strip() for line in read(folder, "console.log").splitlines() if line.strip()][-3:]
        print("kernel %s: NO RESULT (%s) %s" % (kernel, how, " | ".join(tail)[-300:]))
        return 1
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    bad = []
    for tc in ET.parse(junit).getroot().iter("testcase"):
        kinds = {c.tag for c in tc}
        name = "%s::%s" % (tc.get("classname", ""), tc.get("name", ""))
        if "failure" in kinds:
            counts["failed"] += 1
        elif "error" in kinds:
            counts["errors"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
            continue
        child = next(c for c in tc if c.tag in ("failure", "error", "skipped"))
        bad.append("  %s %s: %s" % (child.tag.upper(), name, (child.get("message") or "").splitlines()[0][:160]
                                    if child.get("message") else ""))
    print("kernel %s: %s (%s)" % (kernel, ", ".join("%d %s" % (v, k) for k, v in counts.items()), how))
    if detail:
        print("\n".join(bad))
    return 0 if counts["failed"] == counts["errors"] == 0 else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--detail"]
    sys.exit(main(args[0], "--detail" in sys.argv))
