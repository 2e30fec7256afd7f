"""One benchmark configuration per fresh subprocess, so each reports its own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
# Without this, jemalloc returns freed pages to the OS and each step faults them back in:
# measured 30-70% slower than glibc for both implementations.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# The thresholds lit_meta.glibc_malloc.retain_freed_memory sets, as glibc tunables, so a
# peer that knows nothing of lit-meta runs with the same malloc settings.
GLIBC_RETAIN_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1099511627776"


def allocator_environment(allocator: str) -> dict[str, str]:
    """This process's environment for ``allocator``: ``"default"`` (as it is), ``"glibc-retain"``
    (glibc keeping freed memory, as lit-meta sets it) or ``"jemalloc"`` (preloaded, page decay off)."""
    env = dict(os.environ)
    if allocator == "jemalloc":
        env["LD_PRELOAD"] = str(JEMALLOC)
        env["MALLOC_CONF"] = JEMALLOC_CONF
    elif allocator == "glibc-retain":
        env["GLIBC_TUNABLES"] = GLIBC_RETAIN_TUNABLES
    return env


def allocator_environment_note(allocator: str) -> str:
    """The environment :func:`allocator_environment` sets, for a benchmark's header."""
    return {
        "default": "malloc as it is",
        "glibc-retain": f"GLIBC_TUNABLES={GLIBC_RETAIN_TUNABLES}",
        "jemalloc": f"LD_PRELOAD={JEMALLOC}, MALLOC_CONF={JEMALLOC_CONF}",
    }[allocator]


def run_configuration(command: list[str], allocator: str, label: str) -> dict | None:
    """Runs ``command`` (optionally under jemalloc) and returns the JSON its last stdout line holds.

    A failed run prints its label and the end of its stderr and returns ``None``.
    """
    out = subprocess.run(command, env=allocator_environment(allocator), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])
