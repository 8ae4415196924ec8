"""``python -m flowsignals``: the same as the ``flowsignals`` command."""

from __future__ import annotations

import sys

from flowsignals.cli import main

if __name__ == "__main__":
    sys.exit(main())
