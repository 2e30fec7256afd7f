"""Writing a file so that readers see the old file or the whole new one, never a part."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; on success rename it to ``path``.

    A crash, an exception or a concurrent reader never sees a partial ``path``: the
    temporary file (``.<name>.<random>.tmp`` in the same folder) is removed on any
    error, and :func:`os.replace` swaps it in at once. The folder must exist.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
