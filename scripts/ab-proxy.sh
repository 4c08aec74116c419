#!/usr/bin/env bash
# A/B of the proxy between an earlier revision and this checkout, under load:
#
#   scripts/ab-proxy.sh REV [ROUTE ...]      # default routes: iso-v2 iso-fast
#
# Builds `nylon-serve` at REV (a git worktree, its own target dir) and here,
# starts both on the same config (the example plugins built here, so both
# proxies load the same libraries; an isolated plugin's workers are the
# proxy's own binary, so they are REV's and this checkout's), and alternates
# between them, round by round and route by route:
#   - wrk at CONNS connections for DURATION: req/s;
#   - scripts/paced_cpu.py at PACED_RATE requests/s for DURATION: CPU
#     (user + system) of the proxy and its workers per request.
# Prints every sample, then the medians and the median of the per-round
# ratios (this checkout over REV). Routes: none, fast, v2, iso-fast, iso-v2
# (as in scripts/e2e-bench.sh).
#
# Environment: ROUNDS (4), DURATION (5s, whole seconds), CONNS (64),
# PACED_RATE (1000), ISO_WORKERS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

REV=${1:?usage: scripts/ab-proxy.sh REV [ROUTE ...]}
shift
ROUTES=("$@")
[ ${#ROUTES[@]} -gt 0 ] || ROUTES=(iso-v2 iso-fast)
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PACED_RATE=${PACED_RATE:-1000}
ISO_WORKERS=${ISO_WORKERS:-2}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }

TARGET=${CARGO_TARGET_DIR:-target}
# Absolute: the earlier revision builds from its worktree.
case $TARGET in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  git worktree remove --force "$work/old" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

git worktree add -q --detach "$work/old" "$REV"
old_target="$TARGET/ab-old"
(cd "$work/old" && CARGO_TARGET_DIR="$old_target" cargo build --release -q -p nylon-host --bin nylon-serve)
cargo build --release -q -p nylon-host --bin nylon-serve --example upstream
cargo build --release -q -p nylon-transport --example rust_plugin --example v2_plugin

for side in new old; do
  cp "$TARGET/release/examples/librust_plugin.so" "$work/$side-lf.so"
  cp "$TARGET/release/examples/libv2_plugin.so" "$work/$side-v2.so"
  cp "$TARGET/release/examples/librust_plugin.so" "$work/$side-lfi.so"
  cp "$TARGET/release/examples/libv2_plugin.so" "$work/$side-v2i.so"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
declare -A port pid
port[new]=$(free_port)
port[old]=$(free_port)

"$TARGET/release/examples/upstream" "127.0.0.1:$UP" 1 2>"$work/upstream.log" &
pids+=($!)

config() { # side
  cat <<EOF
server:
  listen: "127.0.0.1:${port[$1]}"
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
plugins:
  - { name: lf, type: ffi, file: "$work/$1-lf.so", transport: fast, timeout: 5s }
  - { name: v2, type: ffi, file: "$work/$1-v2.so", timeout: 5s }
  - { name: lfi, type: ffi, file: "$work/$1-lfi.so", transport: fast, timeout: 5s, isolation: process, workers: $ISO_WORKERS }
  - { name: v2i, type: ffi, file: "$work/$1-v2i.so", timeout: 5s, isolation: process, workers: $ISO_WORKERS }
services:
  - name: up
    service_type: http
    endpoints: [ { ip: 127.0.0.1, port: $UP } ]
routes:
  - route: { type: host, value: "127.0.0.1" }
    name: ab
    paths:
      - { path: "/none", service: { name: up } }
      - { path: "/fast", service: { name: up }, middleware: [ { plugin: lf, entry: e2e_headers } ] }
      - { path: "/v2", service: { name: up }, middleware: [ { plugin: v2, entry: e2e_headers } ] }
      - { path: "/iso-fast", service: { name: up }, middleware: [ { plugin: lfi, entry: e2e_headers } ] }
      - { path: "/iso-v2", service: { name: up }, middleware: [ { plugin: v2i, entry: e2e_headers } ] }
EOF
}
config new >"$work/new.yaml"
config old >"$work/old.yaml"
"$TARGET/release/nylon-serve" --config "$work/new.yaml" --phase-wait future --keep-content-length 2>"$work/new.log" &
pid[new]=$!
pids+=(${pid[new]})
"$old_target/release/nylon-serve" --config "$work/old.yaml" --phase-wait future --keep-content-length 2>"$work/old.log" &
pid[old]=$!
pids+=(${pid[old]})
for side in new old; do
  for route in "${ROUTES[@]}"; do
    for _ in $(seq 1 300); do
      curl -s -o /dev/null -H 'x-request-id: check' "http://127.0.0.1:${port[$side]}/$route" && break
      sleep 0.1
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-request-id: check' "http://127.0.0.1:${port[$side]}/$route")
    [ "$code" = 200 ] || { echo "$side /$route answered $code" >&2; cat "$work/$side.log" >&2; exit 1; }
  done
  wrk -t1 -c"$CONNS" -d2s -H 'x-request-id: bench' "http://127.0.0.1:${port[$side]}/${ROUTES[0]}" >/dev/null
done

samples="$work/samples.txt"
for r in $(seq 1 "$ROUNDS"); do
  for route in "${ROUTES[@]}"; do
    for side in new old; do
      rps=$(wrk -t1 -c"$CONNS" -d"$DURATION" -H 'x-request-id: bench' "http://127.0.0.1:${port[$side]}/$route" \
        | awk '/Requests\/sec/ {print $2}')
      echo "$r $route $side rps $rps" | tee -a "$samples"
    done
    for side in new old; do
      out=$(python3 scripts/paced_cpu.py "${port[$side]}" "/$route" "$PACED_RATE" "${DURATION%s}" "${pid[$side]}")
      cpu=$(echo "$out" | sed 's/.*cpu_us=\([0-9.]*\).*/\1/')
      echo "$r $route $side cpu_us $cpu" | tee -a "$samples"
    done
  done
done

python3 - "$samples" "$REV" "$CONNS" "$PACED_RATE" <<'PY'
import statistics, sys
path, rev, conns, rate = sys.argv[1:5]
s = {}
for line in open(path):
    r, route, side, kind, v = line.split()
    s.setdefault((route, kind, side), {})[int(r)] = float(v)
print(f"\nthis checkout (new) against {rev} (old), median of rounds; ratio = median of per-round new/old")
for route in dict.fromkeys(k[0] for k in s):
    for kind, what in [("rps", f"req/s at {conns} connections"), ("cpu_us", f"CPU µs per request at {rate} req/s")]:
        new, old = s[(route, kind, "new")], s[(route, kind, "old")]
        ratio = statistics.median(new[r] / old[r] for r in new if r in old and old[r] > 0)
        print(f"{route:10} {what:34} new {statistics.median(new.values()):9.1f}  "
              f"old {statistics.median(old.values()):9.1f}  ratio {ratio:.3f}")
PY
