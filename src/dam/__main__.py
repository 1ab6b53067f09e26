"""``python -m dam``: the same as the ``dam`` command."""

import sys

from dam.cli import main

sys.exit(main())
