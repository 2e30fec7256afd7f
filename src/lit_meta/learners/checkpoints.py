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

import importlib
import io
import os
import pickle
import re
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from lit_meta.backbones.config import build_from_config
from lit_meta.errors import CheckpointError, CheckpointGlobalsError

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
        FileNotFoundError: there is no file at ``path`` (and the other ``OSError`` of opening it).
        CheckpointGlobalsError: the file refers to Python objects (pickled) that
            ``weights_only=True`` refuses, or that cannot be imported here; the message names
            them and says how to load the file.
        CheckpointError: the file is not a checkpoint torch can read (truncated, empty, another kind).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # they name the file already
    except Exception as error:  # torch.load raises whatever a truncated or foreign file makes unpickling raise
        raise _unreadable(path, weights_only, error) from error


def _unreadable(path: Any, weights_only: bool | None, error: Exception) -> CheckpointError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    cause = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    if weights_only and isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
        names = referenced_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(error))
        return CheckpointGlobalsError(
            f"{path} refers to Python objects that weights_only=True does not load: {', '.join(names)} (a module "
            "stored pickled because it had no config, built in Python, not by lit-meta or from lit-meta's "
            "backbones; or a function or object given in the hyperparameters, such as a dataset transform of "
            "an older lit-meta). Load it with weights_only=False if you trust the file, or pass the module yourself."
        )
    if isinstance(error, (AttributeError, ImportError)):
        missing = [name for name in referenced_globals(path) if not _importable(name)]
        return CheckpointGlobalsError(
            f"{path} refers to {', '.join(missing) or 'Python code'}, which cannot be imported here ({cause}): "
            "the checkpoint holds an object of the training code pickled by name (such as a function defined in "
            "the training script, which another script cannot import). Make that code importable (install its "
            "package, or put its module on PYTHONPATH), or save the object in the checkpoint as an import path."
        )
    size = os.path.getsize(path) if isinstance(path, (str, os.PathLike)) and os.path.isfile(path) else None
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint{f' ({size} bytes)' if size is not None else ''}: {cause}. "
        "It may be truncated (a copy, a download or a save that was interrupted) or another kind of file; "
        "use another checkpoint (an earlier one, or last.ckpt) or save it again."
    )


def referenced_globals(path: Any) -> list[str]:
    """The Python objects a checkpoint file names (pickled by name) beyond what ``weights_only=True`` loads,
    found without loading them; ``[]`` when the file cannot be scanned."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    try:
        return list(scan(path)) if scan is not None and isinstance(path, (str, os.PathLike)) else []
    except Exception:  # a file that torch cannot scan is reported by the caller's own error
        return []


def _importable(name: str) -> bool:
    # Only for a file loaded with weights_only=False, whose unpickling imported these modules already.
    module, _, attribute = name.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), attribute) if module else False
    except ImportError:
        return False


def check_learner(path: Any, recorded: str, found: type | None, expected: type, *, exact: bool, fix: str) -> None:
    """Raises :class:`~lit_meta.errors.CheckpointError` unless the learner a checkpoint records (``recorded``,
    the registered class ``found``, ``None`` when not registered) is ``expected`` (or, unless ``exact``, a
    subclass of it). A learner that is not registered is compared by class name. ``fix`` ends the message."""
    name = found.__name__ if found is not None else recorded.rpartition(".")[2]
    if found is None:
        fits = name == expected.__qualname__
    else:
        fits = found is expected or (not exact and issubclass(found, expected))
    if not fits:
        raise CheckpointError(f"{path} holds a {name} ({recorded}), not a {expected.__name__}: {fix}")


def recorded_path(checkpoint: Mapping[str, Any]) -> str | None:
    """The class path of the learner a checkpoint was saved from, if it names one."""
    path = checkpoint.get(CHECKPOINT_LEARNER_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    return str(path) if path else None


def recorded_learner(checkpoint: Mapping[str, Any], caller: str) -> str:
    """The class path of the learner a checkpoint was saved from.

    Raises:
        ValueError: the checkpoint does not name it (saved by plain Lightning code).
    """
    path = recorded_path(checkpoint)
    if not path:
        raise ValueError(
            "the checkpoint does not name its learner; call load_from_checkpoint on the learner's class "
            f"(e.g. MAML.load_from_checkpoint) instead of {caller}"
        )
    return path


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
