"""How far glibc's heap outgrows the memory in use when blocks are allocated 64-byte aligned.

PyTorch allocates every CPU tensor with ``posix_memalign(64, n)``. glibc 2.36 (Debian 12),
like every release before the fix of glibc bug 30723 ("malloc: Enable merging of
remainders in memalign", upstream in 2023), serves that by taking ``n + 64 + 32`` bytes
and freeing the pieces in front of and behind the aligned block; those pieces land in
the per-thread cache (tcache) or fastbins, where the heap cannot merge them. Freed, the block is then
exactly ``n`` bytes between two pieces that stay taken, too small for the next request of
its own size, so the heap grows instead of reusing it.

This script replays that pattern with ctypes, no PyTorch: tasks allocate a few
activation-sized blocks, free them in a shuffled order with small transient
allocations in between (what a task's backward does), with malloc set as
``lit_meta.glibc_malloc.retain_freed_memory`` sets it (blocks up to 32 MB on the heap,
no trimming). It reports the peak of the bytes in use and the heap size, for
16-byte (plain ``malloc``) and 64-byte alignment, with and without the tcache.

    python benchmarks/glibc_memalign_fragmentation.py
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import shlex
import subprocess
import sys

ACTIVATIONS = (15_052_800, 3_763_200, 1_881_600)  # Conv4 on 75 Omniglot images: 64x28x28, 64x14x14, ...
TASKS, BLOCKS_PER_TASK, SMALL_LIVE = 200, 8, 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``: ``arena`` is the bytes the main heap got from the kernel."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def replay(alignment: int) -> tuple[float, float]:
    """(peak MB in use by the blocks, heap MB at the end) for one alignment, in this process."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, -1)

    def aligned(size: int) -> int:
        pointer = ctypes.c_void_p()
        if libc.posix_memalign(ctypes.byref(pointer), alignment, size) != 0:
            raise MemoryError(size)
        return pointer.value

    rng = random.Random(0)
    small: list[int] = []
    peak = 0
    for _ in range(TASKS):
        blocks = [(aligned(size), size) for size in rng.choices(ACTIVATIONS, k=BLOCKS_PER_TASK)]
        peak = max(peak, sum(size for _, size in blocks))
        rng.shuffle(blocks)
        for pointer, _ in blocks:
            libc.free(pointer)
            small.append(libc.malloc(rng.choice((40, 72, 200))))
            if len(small) > SMALL_LIVE:
                libc.free(small.pop(0))
    return peak / 2**20, libc.mallinfo2().arena / 2**20


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(*replay(int(sys.argv[2])))
        return
    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, glibc {platform.libc_ver()[1]}")
    print("\n| alignment | tcache | peak MB in use | heap MB | heap / in use |\n| --- | --- | --- | --- | --- |")
    for alignment in (16, 64):
        for tcache in ("on", "off"):
            env = dict(os.environ)
            if tcache == "off":
                env["GLIBC_TUNABLES"] = "glibc.malloc.tcache_count=0"
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(alignment)], env=env, capture_output=True, text=True, check=True
            )
            in_use, heap = map(float, out.stdout.split())
            print(f"| {alignment} | {tcache} | {in_use:.0f} | {heap:.0f} | {heap / in_use:.2f} |")


if __name__ == "__main__":
    main()
