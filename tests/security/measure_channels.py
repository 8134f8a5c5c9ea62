"""Measure covert channels between two concurrent executions (two slots, two jails).

    SANDBOX_HOME=... .venv/bin/python -m tests.security.measure_channels [--bits 200]

A sender and a receiver run at the same time in different jails and agree only on a start
time (CLOCK_MONOTONIC, which jails share) and a bit period T. Each bit is one period: the sender
sets a state, the receiver samples it in the middle of the period. The result is the bit error
rate p and the capacity (1 - H(p)) / T in bits per second, for each channel and period:

  devnull-lock  write lock on byte 0 of /dev/null (a host device node bound into every jail),
                observed by a read-lock attempt
  ro-readlock   read lock on a shared read-only file, observed by a write-lock attempt
  meminfo       sender touches 256 MiB; the receiver reads MemAvailable from /proc/meminfo
"""

from __future__ import annotations

import argparse
import json
import math
import random
import threading
import time

from sandbox import Outcome, Sandbox

PRELUDE = r'''
import fcntl, os, struct, time, json
T0, T, BITS = {t0!r}, {period!r}, {bits!r}
def at(t):
    while True:
        d = t - time.monotonic()
        if d <= 0: return
        time.sleep(d if d > 0.002 else 0)
def lk(kind, start=0):
    return struct.pack("hhqqi", kind, 0, start, 1, 0) + bytes(4)
'''

SENDERS = {
    "devnull-lock": r'''
fd = os.open("/dev/null", os.O_WRONLY)
for i, b in enumerate(BITS):
    at(T0 + i * T)
    fcntl.fcntl(fd, fcntl.F_SETLKW, lk(fcntl.F_WRLCK if b else fcntl.F_UNLCK))
''',
    "ro-readlock": r'''
fd = os.open("/usr/lib/python3.11/os.py", os.O_RDONLY)
for i, b in enumerate(BITS):
    at(T0 + i * T)
    fcntl.fcntl(fd, fcntl.F_SETLK, lk(fcntl.F_RDLCK if b else fcntl.F_UNLCK))
''',
    "meminfo": r'''
import numpy as np
for i, b in enumerate(BITS):
    at(T0 + i * T)
    if b:
        m = np.ones(32 << 20)   # 256 MiB, every page touched
        at(T0 + i * T + 0.75 * T)
        del m
''',
}

RECEIVERS = {
    "devnull-lock": r'''
fd = os.open("/dev/null", os.O_RDWR)
out = []
for i in range(len(BITS)):
    at(T0 + i * T + T / 2)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, lk(fcntl.F_RDLCK))
        fcntl.fcntl(fd, fcntl.F_SETLK, lk(fcntl.F_UNLCK))
        out.append(0)
    except OSError:
        out.append(1)
print(json.dumps(out))
''',
    "ro-readlock": r'''
out = []
for i in range(len(BITS)):
    at(T0 + i * T + T / 2)
    try:
        fd = os.open("/usr/lib/python3.11/os.py", os.O_RDONLY)
        fcntl.fcntl(fd, fcntl.F_SETLK, lk(fcntl.F_WRLCK))
        out.append(0)
    except OSError as e:
        out.append(1 if e.errno in (11, 13) else 0)   # EAGAIN/EACCES would mean a conflict
    finally:
        os.close(fd)
print(json.dumps(out))
''',
    "meminfo": r'''
def avail():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1])
base = []
out = []
for i in range(len(BITS)):
    at(T0 + i * T + 0.6 * T)
    out.append(avail())
med = sorted(out)[len(out) // 2]
lo = min(out)
print(json.dumps([1 if v < (med + lo) / 2 else 0 for v in out]))
''',
}


def h2(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def measure(sb: Sandbox, channel: str, period: float, nbits: int) -> dict:
    bits = [random.getrandbits(1) for _ in range(nbits)]
    t0 = time.monotonic() + 1.5
    head = PRELUDE.format(t0=t0, period=period, bits=bits)
    timeout = 1.5 + nbits * period + 10
    results = {}

    def go(role: str, code: str) -> None:
        results[role] = sb.run(head + code, timeout=timeout)

    threads = [threading.Thread(target=go, args=("send", SENDERS[channel])),
               threading.Thread(target=go, args=("recv", RECEIVERS[channel]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send, recv = results["send"], results["recv"]
    if send.outcome is not Outcome.OK or recv.outcome is not Outcome.OK:
        return {"channel": channel, "period_s": period, "error": f"{send.outcome}/{recv.outcome}: "
                f"{(send.stderr + recv.stderr)[-300:]}"}
    got = json.loads(recv.stdout.strip().splitlines()[-1])
    p = sum(a != b for a, b in zip(bits, got)) / nbits
    p = min(p, 1 - p) if p > 0.5 else p
    return {"channel": channel, "period_s": period, "bits": nbits, "error_rate": round(p, 3),
            "capacity_bit_s": round((1 - h2(p)) / period, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=200)
    args = ap.parse_args()
    plan = [("devnull-lock", 0.01), ("devnull-lock", 0.002), ("devnull-lock", 0.0005),
            ("ro-readlock", 0.01), ("meminfo", 1.0), ("meminfo", 0.5)]
    with Sandbox(slots=2) as sb:
        for channel, period in plan:
            n = args.bits if period < 0.1 else max(20, args.bits // 10)
            print(json.dumps(measure(sb, channel, period, n)), flush=True)


if __name__ == "__main__":
    main()
