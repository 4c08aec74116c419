#!/usr/bin/env python3
"""CPU per request at a fixed request rate, for scripts/e2e-bench.sh.

    paced_cpu.py PORT PATH RATE SECONDS PID

Sends GET PATH to 127.0.0.1:PORT on one keep-alive connection, RATE requests
a second (each waits for its response; the next is sent at its slot, or at
once when late), for SECONDS. Prints one line:

    rate=<requests/s achieved> cpu_us=<CPU µs per request> n=<requests>

where the CPU is user + system time, read from /proc, of process PID (the
proxy) and of its child processes (an isolated plugin's workers) over the
run. Unlike a saturating load, whose req/s hides a thread that burns CPU
waiting, this counts what each request costs the machine.
"""
import http.client
import os
import subprocess
import sys
import time


def cpu_seconds(pids):
    # The process's own line: it includes the threads that exited (a
    # runtime's blocking-pool threads come and go), which a sum over
    # /proc/PID/task would lose.
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def main():
    port, path, rate, secs, pid = sys.argv[1:6]
    port, rate, secs, pid = int(port), float(rate), float(secs), int(pid)
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    pids = [pid] + [int(k) for k in kids]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    before = cpu_seconds(pids)
    n = 0
    start = time.monotonic()
    slot = start
    while time.monotonic() - start < secs:
        conn.request("GET", path, headers={"x-request-id": "paced"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            sys.exit(f"{path} answered {resp.status}")
        n += 1
        slot += 1 / rate
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.monotonic() - start
    used = cpu_seconds(pids) - before
    print(f"rate={n / elapsed:.0f} cpu_us={1e6 * used / n:.1f} n={n}")


if __name__ == "__main__":
    main()
