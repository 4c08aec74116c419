#!/usr/bin/env bash
# Runs every fuzz target briefly (default 12 s each) when a nightly toolchain
# is present; installs cargo-fuzz from crates.io if needed. Says plainly when
# it skips. A crash, or one input running over 10 s (a hang), fails the run
# (libFuzzer exits non-zero).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${FUZZ_SECONDS:-12}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "SKIPPED fuzz smoke: no nightly toolchain"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  if ! timeout 600 cargo install cargo-fuzz --locked --quiet; then
    echo "SKIPPED fuzz smoke: cargo-fuzz could not be installed"
    exit 0
  fi
fi
cargo +nightly fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$work/$t"
  echo "-- $t (${seconds}s)"
  cargo +nightly fuzz run -O "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/" 2>&1 | tail -n 2
done
