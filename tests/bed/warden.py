#!/usr/bin/env python3
"""The test bed's warden: waits until the process it watches has exited (however it ended: success,
panic, Ctrl-C, SIGTERM, SIGKILL), then kills every process of that run:
  * whose environment carries TESTBED_RUN=<run id> — the control plane, moto, the registry, the
    fleet simulator and what the simulated hosts started (their routers), which inherit it;
  * whose command line names one of the run's directories (RUNS/<millis>-<PID>-...): the simulated
    containers, whose environment is exactly the container's, as docker gives it.

Usage: warden.py PID RUN_ID RUNS   (started by tests/bed/src/warden.rs in a session of its own)
"""
import os
import re
import select
import signal
import sys
import time


def marked(entry: bytes, dirs: "re.Pattern[bytes]") -> list[int]:
    pids = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if entry in env or dirs.search(cmdline):
            pids.append(int(name))
    return pids


def main() -> int:
    pid, run, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dirs = re.compile(re.escape(runs.rstrip("/").encode()) + rb"/\d+-" + str(pid).encode() + rb"-")
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
        pids = marked(entry, dirs)
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
