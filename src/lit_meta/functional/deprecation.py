"""Renamed functions and keywords keep working for one release, with a ``DeprecationWarning`` naming the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def renamed_function(function: Callable[P, R], old_name: str) -> Callable[P, R]:
    """``function`` under its old name: it warns, then calls ``function``."""

    @functools.wraps(function)
    def old(*args: P.args, **kwargs: P.kwargs) -> R:
        warnings.warn(
            f"{old_name} was renamed to {function.__name__}; the old name will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return function(*args, **kwargs)

    old.__name__ = old.__qualname__ = old_name
    return old


def renamed_keyword(old: str, new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let the decorated function take its keyword ``new`` under the name ``old`` too, with a warning."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def accepting_old(*args: P.args, **kwargs: P.kwargs) -> R:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{function.__name__}() got both {old}= and {new}=; pass only {new}=")
                warnings.warn(
                    f"{function.__name__}(): the keyword {old}= was renamed to {new}=; "
                    "the old name will be removed in the next release",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return accepting_old

    return decorate
