#!/usr/bin/env bash
# Run the test suite (creates .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/env.sh
# two workers (the CI machine has 2 cores; every test runs one torch thread); a file stays on one worker so its
# module fixtures (captures, exports) are built once
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
