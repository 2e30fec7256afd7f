"""A checkpoint that a Trainer resumes (``fit``) or evaluates (``validate``, ``test``, ``predict``) with
``ckpt_path``, checked against the learner given to the Trainer.

The learner given to the Trainer is the one that runs: its class must be the checkpoint's,
and its hyperparameters (for ``lit-meta``: the config and command line) win over the
checkpoint's, with one warning listing each difference. Those that change the network
cannot differ (the checkpoint's weights would not fit), nor, when resuming ``fit``, those
that change the kind of optimiser or schedule (its state would not carry over).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_meta.errors import CheckpointError
from lit_meta.learners import checkpoints

_ABSENT = "<absent>"


def check_checkpoint(learner: Any, checkpoint: dict[str, Any], path: Any, fitting: bool) -> None:
    """Checks the checkpoint a Trainer restores into ``learner`` (a :class:`~lit_meta.learners.MetaLearner`),
    and when ``fitting`` makes its optimiser state follow the learner's hyperparameters
    (:meth:`~lit_meta.learners.MetaLearner.adjust_optimizer_state`).

    Raises:
        CheckpointError: the checkpoint holds another learner class, or hyperparameters that change
            the network (or, when ``fitting``, the kind of optimiser) differ from the learner's.
    """
    from lit_meta.learners.base import registered_class

    if recorded := checkpoints.recorded_path(checkpoint):
        name = type(learner).__name__
        checkpoints.check_learner(
            path, recorded, registered_class(recorded), type(learner), exact=True,
            fix=f"resume or evaluate it with a learner of its class (lit-meta: model.class_path: {recorded}), or "
            f"train this {name} without ckpt_path (backbone_checkpoint={path} starts it from the checkpoint's "
            "backbone weights)",
        )  # fmt: skip
    stored = checkpoint.get("hyper_parameters", {})
    changes = hyperparameter_changes(stored, learner.hparams)
    if not changes:
        return
    listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
    if mismatch := weight_mismatch(learner, checkpoint):
        raise CheckpointError(
            f"{path} does not fit this {type(learner).__name__} ({mismatch}): its hyperparameters differ from the "
            f"checkpoint's ({listed}, checkpoint -> learner) and build another network. Use the checkpoint's values "
            f"to resume or evaluate it, or start a new run without ckpt_path (backbone_checkpoint={path} starts it "
            "from the checkpoint's backbone weights)"
        )
    if fitting:
        learner.adjust_optimizer_state(checkpoint, stored, path)
    rank_zero_warn(
        f"{path}: these hyperparameters differ from the checkpoint's, and the {type(learner).__name__}'s own "
        f"(for lit-meta: the config and command line's) are used: {listed} (checkpoint -> used)"
    )


def hyperparameter_changes(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``"key.sub_key" -> (stored value, current value)`` for every hyperparameter that differs.

    Nested configs (a backbone's ``class_path`` and ``init_args``) are compared key by key; class
    paths by the class they name when it is imported (``lit_meta.backbones.MLP`` is
    ``lit_meta.backbones.mlp.MLP``); modules kept pickled, and entries starting with ``_``
    (LightningCLI's bookkeeping), are not compared.
    """
    old, new = _flatten(stored), _flatten(current)
    pairs = {key: (old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())}
    return {key: (a, b) for key, (a, b) in pairs.items() if _differs(a, b)}


def _differs(a: Any, b: Any) -> bool:
    # Lists from a YAML config equal the tuples given in Python; values without a plain == compare by repr.
    a, b = (list(v) if isinstance(v, tuple) else v for v in (a, b))
    try:
        return bool(a != b)
    except (TypeError, ValueError, RuntimeError):
        return repr(a) != repr(b)


def weight_mismatch(learner: nn.Module, checkpoint: Mapping[str, Any]) -> str | None:
    """How the checkpoint's ``state_dict`` differs from the learner's in names or shapes (a few examples),
    or ``None`` when it fits (or the learner loads weights non-strictly)."""
    stored = checkpoint.get("state_dict")
    if not isinstance(stored, Mapping) or not getattr(learner, "strict_loading", True):
        return None
    own = learner.state_dict()
    shared = sorted(own.keys() & stored.keys())
    problems = [
        f"{k} {tuple(stored[k].shape)} vs {tuple(own[k].shape)}" for k in shared if stored[k].shape != own[k].shape
    ]
    problems += [f"{key} missing" for key in sorted(own.keys() - stored.keys())]
    problems += [f"{key} unexpected" for key in sorted(stored.keys() - own.keys())]
    if not problems:
        return None
    return "weights: " + ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if str(key).startswith("_") or isinstance(value, nn.Module):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = _canonical_class_path(value) if key == "class_path" else value
    return flat


def _canonical_class_path(path: Any) -> Any:
    # Through modules already imported only: a checkpoint's names are never imported.
    module, _, name = str(path).rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else path
