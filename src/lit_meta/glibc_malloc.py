"""Keep freed CPU memory inside the process while training under glibc's malloc.

A gradient-based meta-learner on CPU allocates and frees each task's activations
(tens of MB for Conv4 on Omniglot) 32 times per meta-batch. glibc's malloc hands
large blocks back to the kernel: blocks over its ``mmap`` threshold are unmapped on
``free``, and free memory at the top of the heap beyond its trim threshold is
released. The next task then takes every page back through a page fault, and the
kernel zero-fills it: hundreds of thousands of page faults per second-order MAML
step with glibc's defaults, a few hundred with the settings below, and faster steps
(``benchmarks/maml_step.py`` counts them; the figures are in ``benchmarks/RESULTS.md``).
jemalloc with page decay off behaves like these settings.

:func:`retain_freed_memory` raises both thresholds (``mallopt``) so freed blocks
stay in the heap for the next task; :func:`release_freed_memory` lowers the trim
threshold again and returns the free heap to the kernel (``malloc_trim``). Peak
memory is that of the largest live set, as before: memory is reused, not added.
Blocks over 32 MB (glibc's largest ``mmap`` threshold) are still mapped per use.

These are process-wide settings, so a library does not make them unasked: the
``lit-meta`` command line (which owns its process) retains by default, a learner
used from Python only with ``retain_cpu_memory=True``
(:class:`~lit_meta.callbacks.RetainFreedCPUMemory`).

What :func:`release_freed_memory` restores, exactly:

* restored: trimming of the heap's top (the trim threshold goes back to 64 MB,
  the value glibc's own dynamic rule gives once its ``mmap`` threshold has reached
  32 MB), and the free heap is returned to the kernel at once;
* not restored: the ``mmap`` threshold stays at 32 MB. Setting it with ``mallopt``
  switches off glibc's dynamic threshold for the rest of the process, and glibc
  offers no call to switch it back on. A process whose large allocations had not
  yet raised glibc's dynamic threshold (it starts at 128 KB) therefore serves
  blocks between 128 KB and 32 MB from the heap instead of ``mmap`` afterwards.

Nothing happens when the process's ``malloc`` is not glibc's (musl, macOS,
Windows, or jemalloc/tcmalloc preloaded with ``LD_PRELOAD``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's upper bound for ``M_MMAP_THRESHOLD`` on 64-bit systems (``HEAP_MAX_SIZE / 2``)."""
NEVER_TRIM = -1
"""``M_TRIM_THRESHOLD`` value that disables trimming the heap's top (``man mallopt``)."""
RELEASED_TRIM_THRESHOLD = 2 * MAX_MMAP_THRESHOLD
"""Trim threshold after :func:`release_freed_memory`: glibc's own dynamic setting
once its mmap threshold has grown to the maximum (twice that threshold)."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, when it is the library serving this process's ``malloc``; else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        process = ctypes.CDLL(None)
        for symbol in ("gnu_get_libc_version", "mallopt", "malloc_trim"):  # AttributeError unless glibc
            getattr(libc, symbol)
    except (OSError, AttributeError):
        return None
    # With jemalloc or tcmalloc preloaded, the process's malloc is not libc's.
    if ctypes.cast(process.malloc, ctypes.c_void_p).value != ctypes.cast(libc.malloc, ctypes.c_void_p).value:
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def glibc_malloc_active() -> bool:
    """Whether this process allocates through glibc's malloc (so the functions here act)."""
    return _glibc() is not None


def _mallopt(parameter: int, value: int) -> bool:
    libc = _glibc()
    return libc is not None and libc.mallopt(parameter, value) == 1


_retaining = False


def retaining() -> bool:
    """Whether :func:`retain_freed_memory` is in effect (and :func:`release_freed_memory` not yet called)."""
    return _retaining


def retain_freed_memory() -> bool:
    """Keep freed blocks up to 32 MB in the heap for reuse, and never trim the heap's top.

    Returns whether the settings took effect (``False`` when malloc is not glibc's).
    Process-wide; undo with :func:`release_freed_memory` (see the module docstring for
    what it restores).
    """
    global _retaining
    _retaining = _mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) and _mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    return _retaining


def return_free_pages() -> bool:
    """Give the free pages of the heap back to the kernel (``malloc_trim``), keeping the
    thresholds as they are: a one-off, e.g. after work whose memory the next will not reuse.

    Returns whether it took effect (``False`` when malloc is not glibc's).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_freed_memory() -> bool:
    """Return the free heap to the kernel and trim it again from now on.

    The ``mmap`` threshold stays at 32 MB, where glibc's own dynamic threshold
    settles after large blocks have been freed; the trim threshold goes back to
    twice that, as glibc's dynamic rule sets it. Returns whether it took effect.
    """
    global _retaining
    _retaining = False
    return _mallopt(M_TRIM_THRESHOLD, RELEASED_TRIM_THRESHOLD) and return_free_pages()
