#!/usr/bin/env bash
# Installs, when missing, the system packages the tests and the bench need on
# a fresh Debian machine: a C compiler (the C example plugins), cmake (the host
# crate's Pingora builds zlib-ng with it), Go 1.19 (Debian's golang-go: the Go
# SDK must build with it; the tests build the Go example plugins with it) and
# Go 1.23 from bookworm-backports (the bench builds its Go plugins with it:
# since Go 1.21 a call from a C thread into Go costs ~0.1-0.2 µs instead of
# 1-3 µs, and real plugins use a recent Go), and redis-server (the host's
# WebSocket rooms-across-nodes tests start their own on a free loopback port;
# under CI=true a missing one fails them). `--wrk` also installs wrk (the
# end-to-end load test). Touches nothing that is already there.
set -euo pipefail
pkgs=()
command -v cc >/dev/null || pkgs+=(gcc)
command -v cmake >/dev/null || pkgs+=(cmake)
command -v go >/dev/null || pkgs+=(golang-go)
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null || pkgs+=(redis-server)
if [ "${1:-}" = "--wrk" ]; then command -v wrk >/dev/null || pkgs+=(wrk); fi
backports=()
[ -x /usr/lib/go-1.23/bin/go ] || backports+=(golang-1.23-go)
[ ${#pkgs[@]} -eq 0 ] && [ ${#backports[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
if [ ${#backports[@]} -gt 0 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/backports.list
fi
apt-get update -qq
[ ${#pkgs[@]} -eq 0 ] || apt-get install -y -qq "${pkgs[@]}"
[ ${#backports[@]} -eq 0 ] || apt-get install -y -qq -t bookworm-backports "${backports[@]}"
