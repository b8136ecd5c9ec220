"""``python -m gradwatch`` and the ``gradwatch`` console script (see :mod:`gradwatch._cli`)."""

from __future__ import annotations

import sys

from gradwatch._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
