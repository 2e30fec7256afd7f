"""The benchmarks' peak-memory figures: a worker's own peak, not its parent's, and not lost to a reset."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

WORKER = """
import json, sys
sys.path.insert(0, {benchmarks!r})
from peak_rss import peak_rss_mb, peak_rss_since_reset_mb, reset_peak_rss
start = peak_rss_mb()
block = bytearray(64 * 2**20)
block[::4096] = b"x" * len(block[::4096])  # touch every page: 64 MB resident
del block
reset_peak_rss()
print(json.dumps({{"start": start, "whole": peak_rss_mb(), "since_reset": peak_rss_since_reset_mb()}}))
"""


def test_a_worker_reports_its_own_peak_across_a_reset() -> None:
    parent_block = bytearray(256 * 2**20)
    parent_block[::4096] = b"x" * len(parent_block[::4096])  # this process: at least 256 MB resident
    code = WORKER.format(benchmarks=str(REPO_ROOT / "benchmarks"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    del parent_block
    peaks = json.loads(out)
    assert peaks["start"] < 200, "the worker's peak includes its parent's (ru_maxrss survives fork and exec)"
    assert peaks["whole"] >= peaks["start"] + 60, "the 64 MB block before the reset is part of the whole peak"
    assert peaks["since_reset"] < peaks["whole"] - 50, "the reset leaves the block out of the steady peak"
