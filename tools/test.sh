#!/usr/bin/env bash
# Run the test suite (creates .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/env.sh
exec .venv/bin/python -m pytest -q "$@"
