"""Backbones that remember how they were built, so checkpoints store a config, not a pickle."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

_PLAIN = (bool, int, float, str, type(None))


class RecordsConfig:
    """Mixin: after construction, ``module.init_config`` is ``{"class_path", "init_args"}``.

    Learners save this config in their hyperparameters instead of the module
    object, so checkpoints load with ``torch.load(weights_only=True)`` and
    resume with a plain ``Trainer.fit(ckpt_path=...)``. Recorded only for the
    class whose ``__init__`` ran outermost and only when every argument is a
    plain value (numbers, strings, booleans, ``None`` and lists/tuples of them).
    """

    init_config: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__dict__["__init__"]
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self) is not cls:
                return
            bound = signature.bind(self, *args, **kw)
            bound.apply_defaults()
            init_args = {name: _plain(value) for name, value in list(bound.arguments.items())[1:]}
            if all(value is not _NOT_PLAIN for value in init_args.values()):
                self.init_config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

        cls.__init__ = recording_init  # type: ignore[method-assign]


_NOT_PLAIN = object()


def _plain(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    return _NOT_PLAIN


def build_from_config(config: Mapping[str, Any]) -> nn.Module:
    """The module a ``{"class_path", "init_args"}`` config describes.

    Only classes that record their config (lit-meta's backbones and their
    imported subclasses) are built, so a checkpoint cannot name arbitrary code.
    """
    module_name, _, name = str(config["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, RecordsConfig) and issubclass(cls, nn.Module)):
        raise ValueError(f"{config['class_path']} is not a backbone that records its config; pass backbone=...")
    return cls(**config.get("init_args", {}))
