"""Will the table fill up?  Fill ratio, drop rates and "table full" kernel messages."""

import sys

from conntrack import Conntrack, health


def check(ct: Conntrack, seconds: float = 10.0) -> health.Health:
    h = health.health(ct, interval=seconds)  # two samples this far apart: rates per second
    print(h)  # the verdict and the numbers behind it
    if h.verdict is not health.Verdict.OK:
        print("act now: raise nf_conntrack_max, or find what opens so many flows")
    return h


if __name__ == "__main__":
    with Conntrack() as ct:
        check(ct, float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
