"""``python -m mcgraph ...`` is the ``mcgraph`` command."""

import sys

from mcgraph.cli.main import main

sys.exit(main())
