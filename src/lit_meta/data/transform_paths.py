"""A dataset's user transform, kept in hyperparameters as its import path.

``EpisodicDataModule(..., dataset_kwargs={"transform": fn})`` applies ``fn`` to every
item. Hyperparameters go into checkpoints, and a function stored there pickled makes
the checkpoint unloadable with ``weights_only=True`` and by any process that cannot
import it (a lambda cannot be saved at all). So a transform is kept as the import path
of a function defined at the top level of a module (``"my_transforms.augment"``) and
resolved back when the dataset is built; anything else is refused before training.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from lit_meta.errors import TransformError

_FIX = (
    "define the transform with def at the top level of a module (my_transforms.py: def augment(image): ...) "
    "and pass that function or its import path, 'my_transforms.augment' (the module must be importable where "
    "the checkpoint is used: installed, or on PYTHONPATH)"
)


def transform_path(transform: Callable[..., Any] | str, key: str = "dataset_kwargs['transform']") -> str:
    """The import path ``"module.qualname"`` of a transform (a path given is checked and returned).

    Raises:
        TransformError: ``transform`` is a lambda, a function defined inside another, or an object
            (a ``functools.partial``, an instance of a class): none has a name a checkpoint can keep;
            or a path that names no callable.
    """
    if isinstance(transform, str):
        resolve_transform(transform, key)
        return transform
    module, qualname = getattr(transform, "__module__", None), getattr(transform, "__qualname__", None)
    if not callable(transform) or not isinstance(module, str) or not isinstance(qualname, str):
        why = f"a {type(transform).__name__} object, not a function"
    elif qualname == "<lambda>" or qualname.endswith(".<lambda>"):
        why = "a lambda, which has no name to import it by"
    elif "<locals>" in qualname:
        why = f"the function {qualname}, defined inside another function, so it cannot be imported"
    else:
        path = f"{module}.{qualname}"
        try:
            if resolve_transform(path, key) is transform:
                return path
        except TransformError:
            pass
        why = f"{path}, but that import path gives another object (or none)"
    raise TransformError(
        f"{key} is {why}. A transform is kept in the datamodule's hyperparameters, and so in every checkpoint, "
        f"as an import path, so that checkpoints load with weights_only=True and without your code: {_FIX}"
    )


def resolve_transform(path: str, key: str = "dataset_kwargs['transform']") -> Callable[..., Any]:
    """The callable an import path names (``"module.function"``, ``"module.Class.method"``), importing its module.

    Raises:
        TransformError: the module cannot be imported, or holds no callable by that name.
    """
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            break
        if callable(target):
            return target
        break
    raise TransformError(f"{key} = {path!r} names no importable function: {_FIX}")
