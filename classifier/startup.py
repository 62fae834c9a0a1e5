"""How long this process has been running: ``startup_s`` in summary.json is process start to the first
training step (interpreter and torch import, data check, decoding, model build, first batch)."""
from __future__ import annotations

import os
import time

_IMPORTED = time.time()  # fallback origin where /proc is not available


def process_start_time() -> float:
    """Epoch seconds at which this process started (Linux: from /proc), else when classifier was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces: split after it
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + started_after_boot
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED


def seconds_since_start() -> float:
    return max(0.0, time.time() - process_start_time())
