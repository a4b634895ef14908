#!/usr/bin/env python3
"""The test bed's warden: waits until the process it watches has exited (however it ended: success,
panic, Ctrl-C, SIGTERM, SIGKILL), then kills every process whose environment carries
TESTBED_RUN=<run id> — the control plane, moto, the registry, the fleet simulator and whatever the
simulated hosts started (their routers and containers), which inherit the marker.

Usage: warden.py PID RUN_ID   (started by tests/bed/src/warden.rs in a session of its own)
"""
import os
import select
import signal
import sys
import time


def marked(entry: bytes) -> list[int]:
    pids = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if entry in f.read().split(b"\0"):
                    pids.append(int(name))
        except OSError:
            continue
    return pids


def main() -> int:
    pid, run = int(sys.argv[1]), sys.argv[2]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        fd = os.pidfd_open(pid)
        select.select([fd], [], [])  # readable once the process has exited
    except ProcessLookupError:
        pass
    entry = f"TESTBED_RUN={run}".encode()
    # Kill until none is left: a process may fork while its siblings die.
    for _ in range(50):
        pids = marked(entry)
        if not pids:
            return 0
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    return 1


if __name__ == "__main__":
    sys.exit(main())
