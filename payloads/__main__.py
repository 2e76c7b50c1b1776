"""``python -m p3s.payloads``: run a DQM payload on a raw file (see :mod:`.runner`)."""

from __future__ import annotations

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
