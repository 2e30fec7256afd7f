"""Peak resident memory of the steady state, leaving out one-off costs such as compiling,
and the page faults a step takes.

Standard library only, so the peer scripts in ``peers/`` (another environment) use it too.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

# Heavy packages a process may hold: its library's own requirements (learn2learn imports
# scipy) or imports that happen only because the package is installed (torchmetrics, which
# Lightning imports, imports matplotlib when present: 25-30 MB that are not the step's).
OPTIONAL_HEAVY_PACKAGES = ("matplotlib", "pandas", "scipy", "tensorboard", "torchvision", "wandb")


# The peak VmHWM reached before the last reset_peak_rss(), so peak_rss_mb() still covers the whole process.
_peak_before_reset_mb = 0.0


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM), so one-off costs such as compiling are left out."""
    global _peak_before_reset_mb
    _peak_before_reset_mb = max(_peak_before_reset_mb, _status_mb("VmHWM"))
    Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float:
    """A kB field of ``/proc/self/status`` (e.g. ``VmRSS``), in MB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def peak_rss_since_reset_mb() -> float:
    """VmHWM: the peak RSS since :func:`reset_peak_rss`, in MB."""
    return _status_mb("VmHWM")


def peak_rss_mb() -> float:
    """The whole process's peak RSS, in MB, across :func:`reset_peak_rss` calls.

    Read from VmHWM, not ``ru_maxrss``: exec starts a fresh VmHWM, but ``ru_maxrss`` keeps the
    parent's RSS at the fork, so a benchmark's worker would report at least its parent's size.
    """
    return max(_peak_before_reset_mb, _status_mb("VmHWM"))


def current_rss_mb() -> float:
    """VmRSS: the resident memory now, in MB."""
    return _status_mb("VmRSS")


def minor_page_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page the allocator got
    from the kernel (zero-filled on first touch), the cost of returning freed memory to it."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def environment_footprint() -> dict:
    """What a process's RSS holds besides its own work, to check that two processes compare
    like with like: the optional packages it imported and its file-backed RSS (the mapped
    pages of shared libraries such as libtorch_cpu.so; after ``import torch`` one libtorch
    mapped 77 MB in one venv and 115 MB in another on the same disk, cause not established)."""
    imported = sorted(name for name in OPTIONAL_HEAVY_PACKAGES if name in sys.modules)
    return {"optional_imports": imported, "file_rss_mb": _status_mb("RssFile")}
