"""How a learner is kept in a Lightning checkpoint, and read back.

A checkpoint records the learner's class (:data:`CHECKPOINT_LEARNER_KEY`), the version
of these entries (:data:`CHECKPOINT_FORMAT_KEY`) and the learner's hyperparameters, in
which every ``nn.Module`` constructor argument is a config (class path and init
arguments) when it has one (:func:`module_config`), so the checkpoint loads with
``weights_only=True``. :meth:`MetaLearner.load_from_checkpoint
<lit_meta.learners.base.MetaLearner.load_from_checkpoint>` reads them with the
functions here.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from lit_meta.backbones.config import build_from_config

CHECKPOINT_LEARNER_KEY = "lit_meta_learner"
"""Checkpoint entry naming the learner's class, so ``MetaLearner.load_from_checkpoint`` finds it."""
CHECKPOINT_FORMAT_KEY = "lit_meta_format"
CHECKPOINT_FORMAT = 2
"""Version of the learner's checkpoint entries. Checkpoints without one (format 1) were written
before the family bases and are upgraded on loading (``MetaLearner.upgrade_checkpoint``)."""
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
"""The only ``_instantiator`` a checkpoint may name: LightningCLI's (``lit-meta fit``)."""


def module_config(module: nn.Module, given: Any = None) -> Any:
    """What the hyperparameters keep of a module argument: the config LightningCLI built it from
    (``given``), else the module's own ``init_config``
    (:class:`~lit_meta.backbones.config.RecordsConfig`), else the module itself (pickled)."""
    return given or getattr(module, "init_config", None) or module


def read(path: Any, weights_only: bool | None) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU).

    Raises:
        pickle.UnpicklingError: ``weights_only=True`` refuses an object in it, such as a
            module stored pickled; the message says how to load it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path} holds objects that weights_only=True refuses, such as a module stored pickled because it "
            "had no config (built in Python, not by lit-meta or from lit-meta's backbones): load it with "
            f"weights_only=False if you trust the file, or pass the module yourself. ({error})"
        ) from error


def recorded_learner(checkpoint: Mapping[str, Any], caller: str) -> str:
    """The class path of the learner a checkpoint was saved from.

    Raises:
        ValueError: the checkpoint does not name it (saved by plain Lightning code).
    """
    path = checkpoint.get(CHECKPOINT_LEARNER_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not path:
        raise ValueError(
            "the checkpoint does not name its learner; call load_from_checkpoint on the learner's class "
            f"(e.g. MAML.load_from_checkpoint) instead of {caller}"
        )
    return str(path)


def stored_modules(hparams: Mapping[str, Any], passed: Collection[str] = ()) -> dict[str, nn.Module]:
    """The module arguments rebuilt from the configs in ``hparams``, by argument name, but for
    those ``passed`` by the caller.

    Configs LightningCLI built are instantiated by its own instantiator, which must be
    the one the checkpoint names; otherwise only classes that record their config are
    built (:func:`~lit_meta.backbones.config.build_from_config`), so a checkpoint cannot
    name arbitrary code.

    Raises:
        ValueError: the checkpoint names another instantiator than LightningCLI's.
    """
    instantiator = hparams.get("_instantiator")
    if instantiator is not None:
        if instantiator != CLI_INSTANTIATOR:
            raise ValueError(
                f"the checkpoint names the instantiator {instantiator!r}; lit-meta only runs {CLI_INSTANTIATOR!r}"
            )
        return {}
    return {
        name: build_from_config(value)
        for name, value in hparams.items()
        if name not in passed and isinstance(value, Mapping) and "class_path" in value
    }


def in_memory(checkpoint: dict[str, Any]) -> io.BytesIO:
    """``checkpoint`` serialised into a file object, for loaders that read a file."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer
