"""``python -m visualtok``: the command line (same as the ``visualtok`` script)."""

import sys

from .cli import main

sys.exit(main())
