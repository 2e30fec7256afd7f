"""Unpickling data files that hold only plain data and numpy arrays, and nothing else.

Datasets are distributed as pickles (CIFAR-100's python release, the miniImageNet and
tieredImageNet pickles of several libraries). Loading a pickle runs whatever functions it
names, so a tampered file runs code. :func:`load_array_pickle` admits only the globals that
numpy arrays need (under their numpy 1 and numpy 2 names) and the codec that Python 3
protocol-2 pickles use for ``bytes``; any other global a pickle names is refused with
:class:`pickle.UnpicklingError` before it is called. Datasets still verify a file's
checksum where one is published, and convert once to a plain-array cache.
"""

from __future__ import annotations

import codecs
import pickle
from typing import IO, Any, ClassVar

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


class ArrayUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only the globals in :attr:`ALLOWED`."""

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # protocol 5's arrays
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name}") from None


def load_array_pickle(stream: IO[bytes], encoding: str = "latin1") -> Any:
    """Unpickle ``stream`` with :class:`ArrayUnpickler`.

    ``encoding="latin1"`` (the default) reads the ``str`` objects of Python 2 pickles,
    numpy arrays among them, as numpy's documentation advises.

    Raises:
        pickle.UnpicklingError: the pickle names a global other than numpy's array ones, or
            is malformed; other errors as :meth:`pickle.Unpickler.load` raises them.
    """
    return ArrayUnpickler(stream, encoding=encoding).load()
