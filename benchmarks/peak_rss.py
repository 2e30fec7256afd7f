"""Peak resident memory of the steady state, leaving out one-off costs such as compiling,
and the page faults a step takes.

Standard library only, so the peer scripts in ``peers/`` (another environment) use it too.
"""

from __future__ import annotations

import resource
from pathlib import Path


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM), so one-off costs such as compiling are left out."""
    Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float:
    """A kB field of ``/proc/self/status`` (e.g. ``VmRSS``), in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def peak_rss_since_reset_mb() -> float:
    """VmHWM: the peak RSS since :func:`reset_peak_rss`, in MB."""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    """VmRSS: the resident memory now, in MB."""
    return _status_mb("VmRSS")


def minor_page_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page the allocator got
    from the kernel (zero-filled on first touch), the cost of returning freed memory to it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
