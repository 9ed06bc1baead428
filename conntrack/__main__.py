"""``python -m conntrack``: the command line (see :mod:`conntrack.cli`)."""

import sys

from .cli import main

sys.exit(main())
