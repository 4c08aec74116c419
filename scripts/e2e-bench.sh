#!/usr/bin/env bash
# The end-to-end load test: the real proxy (nylon-serve, release build) on
# loopback in front of a loopback upstream, driven by wrk.
#
#   scripts/e2e-bench.sh [--docs]      # --docs also writes docs/benchmarks-e2e.md
#
# 1. The same route with no plugin, with a legacy plugin on the baseline
#    transport, the same legacy plugin on the fast transport, and the v2
#    plugin (entry `e2e_headers`: request filter 2 reads + 2 header sets,
#    response filter 1 read + 1 set, body filter and logging say next), and
#    the legacy and v2 plugins again with `isolation: process` (ISO_WORKERS
#    worker processes each, the legacy one driven by the fast transport in its
#    workers), all on one proxy process, interleaved over ROUNDS rounds.
# 2. A plugin whose request filter ends on its own thread 1 ms later
#    (`delay_1ms`, as a Go plugin awaiting a service), at 256 connections:
#    phases as futures (`--phase-wait future`) against the thread-blocking
#    synchronous wait (`--phase-wait block`), each on its own proxy process.
#
# 3. WebSocket echo through the proxy (`ws_echo` as a plugin service on each
#    transport, and on the two isolated plugins, proxy A), driven by
#    host/examples/ws_load.rs: WS_CONNS
#    connections, each keeping WS_WINDOW messages of WS_SIZE bytes in flight
#    for DURATION; messages echoed per second, every echo checked in order.
#
# 4. CPU per request at a fixed rate (PACED_RATE requests/s on one
#    connection, scripts/paced_cpu.py): user + system time of proxy A and its
#    isolated workers, per request, on the routes of part 1. A saturating
#    load's req/s hides threads that burn CPU while they wait; this does not.
#
# Proxies A (futures) and B (blocking wait) run with --keep-content-length;
# proxy C (futures, default framing) gives the rows "re-framed chunked".
#
# Environment: ROUNDS (3), DURATION (10s, whole seconds), CONNS (64),
# SLOW_CONNS (256), PROXY_THREADS (2), UPSTREAM_THREADS (1), WRK_THREADS (1),
# WS_CONNS (64), WS_WINDOW (16), WS_SIZE (64), ISO_WORKERS (2), PACED_RATE (1000).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
SLOW_CONNS=${SLOW_CONNS:-256}
PROXY_THREADS=${PROXY_THREADS:-2}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
WRK_THREADS=${WRK_THREADS:-1}
WS_CONNS=${WS_CONNS:-64}
WS_WINDOW=${WS_WINDOW:-16}
WS_SIZE=${WS_SIZE:-64}
ISO_WORKERS=${ISO_WORKERS:-2}
PACED_RATE=${PACED_RATE:-1000}
DOCS=0
[ "${1:-}" = "--docs" ] && DOCS=1

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }

TARGET=${CARGO_TARGET_DIR:-target}
# NYLON_CARGO_LOCK=/tmp/nylon-cargo.lock serialises the builds with other users of the machine.
cargo_() { if [ -n "${NYLON_CARGO_LOCK:-}" ]; then flock "$NYLON_CARGO_LOCK" cargo "$@"; else cargo "$@"; fi; }
cargo_ build --release -q -p nylon-host --bin nylon-serve --example upstream --example ws_load
cargo_ build --release -q -p nylon-transport --example rust_plugin --example v2_plugin

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# One copy of the legacy library per transport: each load has its own state.
cp "$TARGET/release/examples/librust_plugin.so" "$work/legacy-baseline.so"
cp "$TARGET/release/examples/librust_plugin.so" "$work/legacy-fast.so"
cp "$TARGET/release/examples/libv2_plugin.so" "$work/v2.so"
cp "$TARGET/release/examples/librust_plugin.so" "$work/legacy-iso.so"
cp "$TARGET/release/examples/libv2_plugin.so" "$work/v2-iso.so"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
PA=$(free_port)
PB=$(free_port)
PC=$(free_port)

"$TARGET/release/examples/upstream" "127.0.0.1:$UP" "$UPSTREAM_THREADS" 2>"$work/upstream.log" &
pids+=($!)

config() { # $1 = port
  cat <<EOF
server:
  listen: "127.0.0.1:$1"
  threads: $PROXY_THREADS
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
plugins:
  - { name: lb, type: ffi, file: "$work/legacy-baseline.so", transport: baseline, timeout: 5s }
  - { name: lf, type: ffi, file: "$work/legacy-fast.so", transport: fast, timeout: 5s }
  - { name: v2, type: ffi, file: "$work/v2.so", timeout: 5s }
  - { name: lfi, type: ffi, file: "$work/legacy-iso.so", transport: fast, timeout: 5s, isolation: process, workers: $ISO_WORKERS }
  - { name: v2i, type: ffi, file: "$work/v2-iso.so", timeout: 5s, isolation: process, workers: $ISO_WORKERS }
services:
  - name: up
    service_type: http
    endpoints: [ { ip: 127.0.0.1, port: $UP } ]
  - { name: ws-baseline, service_type: plugin, plugin: { name: lb, entry: ws_echo } }
  - { name: ws-fast, service_type: plugin, plugin: { name: lf, entry: ws_echo } }
  - { name: ws-v2, service_type: plugin, plugin: { name: v2, entry: ws_echo } }
  - { name: ws-iso-fast, service_type: plugin, plugin: { name: lfi, entry: ws_echo } }
  - { name: ws-iso-v2, service_type: plugin, plugin: { name: v2i, entry: ws_echo } }
routes:
  - route: { type: host, value: "127.0.0.1" }
    name: bench
    paths:
      - { path: "/none", service: { name: up } }
      - { path: "/baseline", service: { name: up }, middleware: [ { plugin: lb, entry: e2e_headers } ] }
      - { path: "/fast", service: { name: up }, middleware: [ { plugin: lf, entry: e2e_headers } ] }
      - { path: "/v2", service: { name: up }, middleware: [ { plugin: v2, entry: e2e_headers } ] }
      - { path: "/iso-fast", service: { name: up }, middleware: [ { plugin: lfi, entry: e2e_headers } ] }
      - { path: "/iso-v2", service: { name: up }, middleware: [ { plugin: v2i, entry: e2e_headers } ] }
      - { path: "/delay-baseline", service: { name: up }, middleware: [ { plugin: lb, entry: delay_1ms } ] }
      - { path: "/delay-fast", service: { name: up }, middleware: [ { plugin: lf, entry: delay_1ms } ] }
      - { path: "/delay-v2", service: { name: up }, middleware: [ { plugin: v2, entry: delay_1ms } ] }
      - { path: "/ws-baseline", service: { name: ws-baseline } }
      - { path: "/ws-fast", service: { name: ws-fast } }
      - { path: "/ws-v2", service: { name: ws-v2 } }
      - { path: "/ws-iso-fast", service: { name: ws-iso-fast } }
      - { path: "/ws-iso-v2", service: { name: ws-iso-v2 } }
EOF
}
config "$PA" >"$work/a.yaml"
config "$PB" >"$work/b.yaml"
config "$PC" >"$work/c.yaml"
# A: futures; B: the thread-blocking wait; both keep the upstream's
# Content-Length (the example plugins' e2e_headers and delay_1ms do not
# change bodies). C: futures with the default framing (every response through
# a plugin re-framed as chunked, since a body filter may change its length).
"$TARGET/release/nylon-serve" --config "$work/a.yaml" --phase-wait future --keep-content-length 2>"$work/a.log" &
PA_PID=$!
pids+=($PA_PID)
"$TARGET/release/nylon-serve" --config "$work/b.yaml" --phase-wait block --keep-content-length 2>"$work/b.log" &
PB_PID=$!
pids+=($PB_PID)
"$TARGET/release/nylon-serve" --config "$work/c.yaml" --phase-wait future 2>"$work/c.log" &
PC_PID=$!
pids+=($PC_PID)
for p in "$PA" "$PB" "$PC" "$UP"; do
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$p/none" && break
    sleep 0.1
  done
done
for p in "$PA" "$PB" "$PC"; do
  for route in none baseline fast v2 iso-fast iso-v2 delay-baseline delay-fast delay-v2; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'x-request-id: check' "http://127.0.0.1:$p/$route")
    [ "$code" = 200 ] || { echo "route /$route on port $p answered $code" >&2; cat "$work"/*.log >&2; exit 1; }
  done
done

results="$work/results.txt"
: >"$results"
ws_results="$work/ws_results.txt"
: >"$ws_results"
DURATION_MS=$(( ${DURATION%s} * 1000 ))
run_ws() { # label port path
  local out
  out=$("$TARGET/release/examples/ws_load" "ws://127.0.0.1:$2$3" "$WS_CONNS" "$DURATION_MS" "$WS_WINDOW" "$WS_SIZE")
  echo "== $1 $out" >>"$ws_results"
  echo "$1 c=$WS_CONNS: $(echo "$out" | sed 's/.*msgs_per_s=//') msgs/s" >&2
}
paced_results="$work/paced_results.txt"
: >"$paced_results"
run_paced() { # label port path
  local out
  out=$(python3 scripts/paced_cpu.py "$2" "$3" "$PACED_RATE" "${DURATION%s}" "$PA_PID")
  echo "== $1 $out" >>"$paced_results"
  echo "$1 at $PACED_RATE req/s: $out" >&2
}
run() { # label port path conns
  local out
  out=$(wrk -t"$WRK_THREADS" -c"$4" -d"$DURATION" --latency -H 'x-request-id: bench' "http://127.0.0.1:$2$3")
  echo "== $1 $4 $out" | tr '\n' ' ' >>"$results"
  echo >>"$results"
  echo "$1 c=$4: $(echo "$out" | grep -E 'Requests/sec' | awk '{print $2}') req/s" >&2
}

echo "warm-up" >&2
wrk -t1 -c"$CONNS" -d2s -H 'x-request-id: bench' "http://127.0.0.1:$PA/fast" >/dev/null
wrk -t1 -c"$CONNS" -d2s -H 'x-request-id: bench' "http://127.0.0.1:$PA/v2" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  run none "$PA" /none "$CONNS"
  run baseline "$PA" /baseline "$CONNS"
  run fast "$PA" /fast "$CONNS"
  run v2 "$PA" /v2 "$CONNS"
  run iso-fast "$PA" /iso-fast "$CONNS"
  run iso-v2 "$PA" /iso-v2 "$CONNS"
  run fast-chunked "$PC" /fast "$CONNS"
  run v2-chunked "$PC" /v2 "$CONNS"
  run slow-none "$PA" /none "$SLOW_CONNS"
  run slow-fast-future "$PA" /delay-fast "$SLOW_CONNS"
  run slow-fast-block "$PB" /delay-fast "$SLOW_CONNS"
  run slow-v2-future "$PA" /delay-v2 "$SLOW_CONNS"
  run slow-v2-block "$PB" /delay-v2 "$SLOW_CONNS"
  run slow-baseline-future "$PA" /delay-baseline "$SLOW_CONNS"
  run slow-baseline-block "$PB" /delay-baseline "$SLOW_CONNS"
  run_ws ws-baseline "$PA" /ws-baseline
  run_ws ws-fast "$PA" /ws-fast
  run_ws ws-v2 "$PA" /ws-v2
  run_ws ws-iso-fast "$PA" /ws-iso-fast
  run_ws ws-iso-v2 "$PA" /ws-iso-v2
  for route in none fast v2 iso-fast iso-v2; do
    run_paced "$route" "$PA" "/$route"
  done
done

machine=$(printf '%s, %s logical CPUs, %s GiB RAM, Linux %s' \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(nproc)" \
  "$(awk '/MemTotal/ {printf "%d", $2/1048576}' /proc/meminfo)" "$(uname -r)")
# SIGTERM: graceful shutdown; each proxy prints its counters as it exits.
kill -TERM "$PA_PID" "$PB_PID" "$PC_PID" 2>/dev/null || true
wait "$PA_PID" "$PB_PID" "$PC_PID" 2>/dev/null || true
stats_a=$(grep -h 'nylon-serve: stats' "$work/a.log" | sed 's/nylon-serve: stats //' || true)
stats_b=$(grep -h 'nylon-serve: stats' "$work/b.log" | sed 's/nylon-serve: stats //' || true)

table=$(python3 - "$results" "$ROUNDS" "$DURATION" "$CONNS" "$SLOW_CONNS" "$PROXY_THREADS" \
  "$UPSTREAM_THREADS" "$WRK_THREADS" "$machine" "$stats_a" "$stats_b" "$ws_results" \
  "$WS_CONNS" "$WS_WINDOW" "$WS_SIZE" "$paced_results" "$PACED_RATE" <<'PY'
import re, statistics, sys
path, rounds, duration, conns, slow, pthreads, uthreads, wthreads, machine, sa, sb = sys.argv[1:12]
ws_path, ws_conns, ws_window, ws_size, paced_path, paced_rate = sys.argv[12:18]
def ms(v):
    m = re.match(r'([\d.]+)(us|ms|s)', v)
    if not m: return float('nan')
    x = float(m.group(1)); return {'us': x / 1000, 'ms': x, 's': x * 1000}[m.group(2)]
rows = {}
for line in open(path):
    m = re.match(r'== (\S+) (\d+) (.*)', line)
    if not m: continue
    label, text = m.group(1), m.group(3)
    rps = float(re.search(r'Requests/sec:\s+([\d.]+)', text).group(1))
    dist = text[text.index('Latency Distribution'):]
    p50 = ms(re.search(r' 50%\s+(\S+)', dist).group(1))
    p99 = ms(re.search(r' 99%\s+(\S+)', dist).group(1))
    non2xx = re.search(r'Non-2xx or 3xx responses: (\d+)', text)
    errs = re.search(r'Socket errors: (.*?)(?:Requests|$)', text)
    rows.setdefault(label, []).append((rps, p50, p99, int(non2xx.group(1)) if non2xx else 0,
                                       errs.group(1).strip() if errs else ''))
def med(label):
    runs = sorted(rows[label], key=lambda r: r[0])
    return runs[len(runs) // 2]
def ratio(label, ref):
    rs = [a[0] / b[0] for a, b in zip(rows[label], rows[ref])]
    return statistics.median(rs)
out = []
out.append(f"Machine: {machine}. Proxy: {pthreads} Pingora worker threads; upstream: {uthreads} "
           f"thread; wrk: {wthreads} thread; all on the same host over loopback. {rounds} rounds of "
           f"{duration} per variant, interleaved; the figures are the median round's (req/s median; "
           f"p50/p99 of that round); the ratio is the median of the per-round ratios to the "
           f"no-plugin route of the same round.")
out.append("")
out.append(f"### Same route, {conns} connections")
out.append("")
out.append("| route | req/s | vs no plugin | p50 | p99 | req/s per round | non-2xx |")
out.append("|---|---:|---:|---:|---:|---|---:|")
names = {'none': 'no plugin', 'baseline': 'legacy plugin, baseline transport',
         'fast': 'legacy plugin, fast transport', 'v2': 'v2 plugin',
         'iso-fast': 'legacy plugin, isolation: process (fast in the workers)',
         'iso-v2': 'v2 plugin, isolation: process',
         'fast-chunked': 'legacy plugin, fast, re-framed chunked (default framing)',
         'v2-chunked': 'v2 plugin, re-framed chunked (default framing)'}
for label in ['none', 'baseline', 'fast', 'v2', 'iso-fast', 'iso-v2', 'fast-chunked', 'v2-chunked']:
    r = med(label)
    out.append(f"| {names[label]} | {r[0]:.0f} | {ratio(label, 'none'):.3f} | {r[1]:.2f} ms | "
               f"{r[2]:.2f} ms | {', '.join(f'{x[0]:.0f}' for x in rows[label])} | "
               f"{sum(x[3] for x in rows[label])} |")
out.append("")
out.append(f"Isolated vs in-process (median of the per-round ratios): legacy isolated / legacy fast "
           f"{ratio('iso-fast', 'fast'):.3f}, v2 isolated / legacy fast {ratio('iso-v2', 'fast'):.3f}, "
           f"v2 isolated / v2 in-process {ratio('iso-v2', 'v2'):.3f}.")
out.append("")
out.append(f"### A phase that ends on the plugin's thread 1 ms later, {slow} connections")
out.append("")
out.append("| route | wait | req/s | vs no plugin | p50 | p99 | req/s per round | non-2xx |")
out.append("|---|---|---:|---:|---:|---:|---|---:|")
out.append(f"| no plugin | - | {med('slow-none')[0]:.0f} | 1.000 | {med('slow-none')[1]:.2f} ms | "
           f"{med('slow-none')[2]:.2f} ms | {', '.join(f'{x[0]:.0f}' for x in rows['slow-none'])} | "
           f"{sum(x[3] for x in rows['slow-none'])} |")
for t, tn in [('fast', 'legacy, fast'), ('v2', 'v2'), ('baseline', 'legacy, baseline')]:
    for w in ['future', 'block']:
        label = f'slow-{t}-{w}'
        r = med(label)
        out.append(f"| {tn} | {w} | {r[0]:.0f} | {ratio(label, 'slow-none'):.3f} | {r[1]:.2f} ms | "
                   f"{r[2]:.2f} ms | {', '.join(f'{x[0]:.0f}' for x in rows[label])} | "
                   f"{sum(x[3] for x in rows[label])} |")
out.append("")
ws = {}
for line in open(ws_path):
    m = re.match(r'== (\S+) .*msgs_per_s=([\d.]+)', line)
    if m:
        ws.setdefault(m.group(1), []).append(float(m.group(2)))
if ws:
    out.append(f"### WebSocket echo, {ws_conns} connections, {ws_window} messages of {ws_size} bytes "
               f"in flight per connection")
    out.append("")
    out.append("`ws_echo` as a plugin service on proxy A; `host/examples/ws_load.rs` checks every echo "
               "arrives in order. Messages echoed per second (median round).")
    out.append("")
    out.append("| route | msgs/s | vs v2 | msgs/s per round |")
    out.append("|---|---:|---:|---|")
    wnames = {'ws-baseline': 'legacy plugin, baseline transport',
              'ws-fast': 'legacy plugin, fast transport', 'ws-v2': 'v2 plugin',
              'ws-iso-fast': 'legacy plugin, isolation: process (fast in the workers)',
              'ws-iso-v2': 'v2 plugin, isolation: process'}
    for label in ['ws-baseline', 'ws-fast', 'ws-v2', 'ws-iso-fast', 'ws-iso-v2']:
        if label not in ws:
            continue
        runs = ws[label]
        m = sorted(runs)[len(runs) // 2]
        r = statistics.median(a / b for a, b in zip(runs, ws['ws-v2']))
        out.append(f"| {wnames[label]} | {m:.0f} | {r:.3f} | {', '.join(f'{x:.0f}' for x in runs)} |")
    out.append("")
paced = {}
for line in open(paced_path):
    m = re.match(r'== (\S+) rate=([\d.]+) cpu_us=(-?[\d.]+)', line)
    if m:
        paced.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
if paced:
    out.append(f"### CPU per request at {paced_rate} requests/s")
    out.append("")
    out.append(f"One keep-alive connection, a request every {1000 / float(paced_rate):g} ms "
               "(`scripts/paced_cpu.py`), on proxy A: user + system CPU time of the proxy process "
               "and its isolated plugins' worker processes, per request (the upstream and the "
               "client are not counted). Median round.")
    out.append("")
    out.append("| route | CPU per request | over no plugin | req/s | CPU per round |")
    out.append("|---|---:|---:|---:|---|")
    def cmed(label):
        return statistics.median(c for _, c in paced[label])
    for label in ['none', 'fast', 'v2', 'iso-fast', 'iso-v2']:
        if label not in paced:
            continue
        runs = paced[label]
        out.append(f"| {names[label]} | {cmed(label):.0f} µs | {cmed(label) - cmed('none'):+.0f} µs | "
                   f"{statistics.median(r for r, _ in runs):.0f} | "
                   f"{', '.join(f'{c:.0f}' for _, c in runs)} |")
    out.append("")
out.append(f"Host counters at exit (futures proxy A): `{sa}`; (blocking proxy B): `{sb}`.")
print("\n".join(out))
PY
)
echo
echo "$table"
if [ "$DOCS" = 1 ]; then
  {
    echo "# End-to-end load test: the proxy with the transport in it"
    echo
    echo "Generated by \`scripts/e2e-bench.sh --docs\` ($(date -u +%Y-%m-%d)). See"
    echo "[host.md](host.md) for what runs. wrk drives \`nylon-serve\` (release build) on"
    echo "loopback, in front of \`host/examples/upstream.rs\`; every request carries"
    echo "\`x-request-id\`, which the plugin echoes."
    echo
    echo "$table"
  } >docs/benchmarks-e2e.md
  echo "wrote docs/benchmarks-e2e.md" >&2
fi
