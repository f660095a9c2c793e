"""The ``mcgraph`` command line: `main` (entry point), one module per command, `common` (shared pieces)."""
