#!/usr/bin/env bash
# Every test of the repository on a fresh machine: the root crate's tests,
# then the host crate's (Pingora; its end-to-end tests run the real proxy
# over loopback). Installs what the tests need when it is missing
# (scripts/deps.sh: a C compiler, cmake for Pingora's zlib-ng, Go). Extra arguments go to both `cargo test`s
# (`scripts/test-all.sh --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test "$@"
cargo test -p nylon-host "$@"
