"""A replica's resident memory, for its `stats()` (and the benchmark's memory per replica)."""

from __future__ import annotations

import os
import resource
import sys


def resident_bytes() -> int:
    """This process's resident set size now (Linux: /proc/self/statm); elsewhere its peak (getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
