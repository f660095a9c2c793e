#!/usr/bin/env bash
# Run an mcgraph command in the project's environment (creates .venv first if needed), e.g.
#   tools/run.sh demo --cache motioncache
set -euo pipefail
cd "$(dirname "$0")/.."
tools/env.sh
exec .venv/bin/mcgraph "$@"
