"""One server writes a session under flock (as PHP does), another server then reads it without a
lock (cat, a monitoring probe, PHP on another server before its flock): N alternations. Prints
JSON: the read's latency (open + read + close, microseconds) and how many reads were stale."""
import fcntl
import json
import os
import statistics
import sys
import time

a_path, b_path, n, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
payload = "x" * 2000
lat, stale = [], 0
start = time.monotonic()
for i in range(n):
    if time.monotonic() - start > limit:
        break
    body = f"n|i:{i};pad|s:{len(payload)}:\"{payload}\";".encode()
    fd = os.open(a_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, body, 0)
    os.close(fd)
    t = time.perf_counter_ns()
    with open(b_path, "rb") as f:
        got = f.read()
    lat.append((time.perf_counter_ns() - t) / 1000)
    if got != body:
        stale += 1
lat.sort()
print(json.dumps({
    "reads": len(lat),
    "stale": stale,
    "p50_us": statistics.median(lat) if lat else None,
    "p99_us": lat[int(len(lat) * 0.99) - 1] if lat else None,
}))
