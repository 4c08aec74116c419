#!/usr/bin/env bash
# The main job on a fresh machine: installs what the bench needs (scripts/deps.sh:
# a C compiler and Go 1.23 for the `request_go` row), then runs the
# before/after table. Arguments go to `nylon-transport bench`
# (`scripts/bench.sh --quick`, `scripts/bench.sh --docs docs/`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo run --release -- bench "$@"
