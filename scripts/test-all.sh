#!/usr/bin/env bash
# Every test of the repository on a fresh machine: the root crate's tests,
# then the host crate's (Pingora; its end-to-end tests run the real proxy
# over loopback). Installs what the host crate's build needs (cmake, for
# zlib-ng) when it is missing. Extra arguments go to both `cargo test`s
# (`scripts/test-all.sh --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2"; }; }
need cc gcc
need cmake cmake
cargo test "$@"
cargo test -p nylon-host "$@"
