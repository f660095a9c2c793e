"""``python -m mcgraph ...`` is the ``mcgraph`` command."""

import sys

from .cli import main

sys.exit(main())
