"""Parameter and buffer dictionaries of a backbone, and the functional forward pass that takes them.

Learners never mutate a backbone during adaptation: they run it with
:func:`torch.func.functional_call` on task-specific dictionaries. These helpers
build those dictionaries: which parameters adapt (all of them for MAML, only
the head for ANIL) and which buffers BatchNorm sees; and they run the forward
pass, with BatchNorm in training or evaluation behaviour whatever the module's mode, or set a
module in evaluation mode for a while (:func:`evaluation_mode`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

BatchNormStatistics = Literal["task", "running", "fresh"]
BatchNormBehaviour = Literal["module", "train", "eval"]
"""How BatchNorm layers run in :func:`functional_forward`: as the module's mode says, or forced."""

_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def head_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters of the last ``nn.Linear`` registered in ``module``: its classifier head.

    ANIL (Raghu et al., 2020) adapts only these in the inner loop.

    Raises:
        ValueError: ``module`` holds no ``nn.Linear``.
    """
    heads = [name for name, child in module.named_modules() if isinstance(child, nn.Linear)]
    if not heads:
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear layer, so it has no head to adapt; "
            "give the backbone a linear head (out_features=ways) or name the parameters to adapt"
        )
    prefix = f"{heads[-1]}." if heads[-1] else ""
    return [f"{prefix}{name}" for name, _ in module.get_submodule(heads[-1]).named_parameters()]


def adaptable_parameters(
    module: nn.Module, include: Callable[[str], bool] | Sequence[str] | None = None
) -> dict[str, Tensor]:
    """The module's own parameters (not copies), by name, optionally selected.

    Args:
        module: the backbone.
        include: which parameters to keep: ``None`` for all; a predicate on the
            name; or a sequence of parameter names and module prefixes
            (``"head"`` keeps ``"head.weight"`` and ``"head.bias"``).

    Raises:
        ValueError: a name in ``include`` matches no parameter.
    """
    params = dict(module.named_parameters())
    if include is None:
        return params
    if callable(include):
        return {name: p for name, p in params.items() if include(name)}
    selectors = [include] if isinstance(include, str) else list(include)
    unknown = [s for s in selectors if not any(_selects(s, name) for name in params)]
    if unknown:
        raise ValueError(f"{unknown} name no parameter of {type(module).__name__}; its parameters are {list(params)}")
    return {name: p for name, p in params.items() if any(_selects(s, name) for s in selectors)}


def _selects(selector: str, name: str) -> bool:
    return name == selector or name.startswith(f"{selector}.")


def task_buffers(module: nn.Module, batch_norm: BatchNormStatistics = "task") -> dict[str, Tensor | None]:
    """The buffers to pass to :func:`functional_forward`.

    Args:
        module: the backbone.
        batch_norm: ``"task"`` gives every BatchNorm layer ``None`` for its
            ``running_mean``, ``running_var`` and ``num_batches_tracked``, so it
            normalises with the statistics of the batch it sees (one task's
            support or query set) in train and eval mode alike, and never
            updates its running statistics. ``"running"`` gives the module's own
            buffers: BatchNorm then behaves as the module's mode says (eval:
            running statistics; train: batch statistics, and the running
            statistics are updated in place). ``"fresh"`` gives every BatchNorm
            layer new running statistics, as a newly built layer has them
            (``running_mean`` 0, ``running_var`` 1, ``num_batches_tracked`` 0),
            so statistics can be collected for one task without touching the
            module's (see ``batch_norm`` of :func:`functional_forward`).

    Returns:
        Every buffer of ``module`` by name; other layers' buffers are the module's own.

    Raises:
        ValueError: ``batch_norm`` is none of the above.
    """
    if batch_norm not in ("task", "running", "fresh"):
        raise ValueError(f"batch_norm must be 'task', 'running' or 'fresh', got {batch_norm!r}")
    buffers: dict[str, Tensor | None] = dict(module.named_buffers())
    if batch_norm == "running":
        return buffers
    for prefix, child in module.named_modules():
        if isinstance(child, _BatchNorm):
            for name, buffer in child.named_buffers(recurse=False):
                key = f"{prefix}.{name}" if prefix else name
                if batch_norm == "task":
                    buffers[key] = None
                elif name == "running_var":
                    buffers[key] = torch.ones_like(buffer)
                else:
                    buffers[key] = torch.zeros_like(buffer)
    return buffers


def functional_forward(
    module: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor | None],
    x: Tensor,
    *,
    batch_norm: BatchNormBehaviour = "module",
    batch_norm_momentum: float | None = None,
) -> Tensor:
    """``module(x)`` with ``params`` and ``buffers`` in place of the module's own tensors.

    Parameters or buffers missing from the dictionaries are the module's own.
    The module is left exactly as it was: its tensors and its ``training`` flags.

    Args:
        module: the network.
        params: parameters by name.
        buffers: buffers by name, e.g. from :func:`task_buffers`.
        x: the input.
        batch_norm: ``"module"``: every BatchNorm layer behaves as its mode says.
            ``"train"``: every BatchNorm layer normalises with the batch's statistics
            and updates the running statistics it is given in place (weight of the
            newest batch ``batch_norm_momentum``), whatever its mode. ``"eval"``:
            every BatchNorm layer normalises with the running statistics it is
            given (with the batch's where they are ``None``) and updates nothing,
            whatever its mode. The mode is not changed: each ``F.batch_norm`` call
            of the forward pass has its ``training`` and ``momentum`` arguments
            replaced, by a ``TorchFunctionMode`` (thread-local) active for this call
            only. With ``"train"`` every BatchNorm ``num_batches_tracked`` given in
            ``buffers`` advances by one per call; with ``"eval"`` none does.
        batch_norm_momentum: with ``"train"`` (required there, and only there), the
            weight of the newest batch in the running averages, in ``(0, 1]``:
            ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's
            convention; the running variance takes the unbiased batch variance).

    Raises:
        ValueError: ``batch_norm`` is none of the above, or ``batch_norm_momentum``
            is missing with ``"train"``, given without it, or out of range.
    """
    if batch_norm not in ("module", "train", "eval"):
        raise ValueError(f"batch_norm must be 'module', 'train' or 'eval', got {batch_norm!r}")
    if (batch_norm == "train") != (batch_norm_momentum is not None):
        raise ValueError(
            f"batch_norm_momentum={batch_norm_momentum} with batch_norm={batch_norm!r}: give a momentum "
            "with 'train' (the weight of the newest batch in the running averages) and only with it"
        )
    if batch_norm_momentum is not None and not 0 < batch_norm_momentum <= 1:
        raise ValueError(f"batch_norm_momentum={batch_norm_momentum}: use a value in (0, 1]")
    if batch_norm == "module":
        return functional_call(module, {**params, **buffers}, (x,))
    # The module's forward counts batches only in training mode; hiding the counts makes the
    # count independent of the mode, and it is advanced here instead.
    counts = {key: buffers.get(key, None) for key in _batch_norm_counts(module)}
    with _ForcedBatchNorm(training=batch_norm == "train", momentum=batch_norm_momentum):
        out = functional_call(module, {**params, **buffers, **dict.fromkeys(counts)}, (x,))
    if batch_norm == "train":
        with torch.no_grad():
            for count in counts.values():
                if count is not None:
                    count.add_(1)
    return out


def _batch_norm_counts(module: nn.Module) -> list[str]:
    """Names of the ``num_batches_tracked`` buffers of the module's BatchNorm layers."""
    return [
        f"{prefix}.num_batches_tracked" if prefix else "num_batches_tracked"
        for prefix, child in module.named_modules()
        if isinstance(child, _BatchNorm) and child.num_batches_tracked is not None
    ]


class _ForcedBatchNorm(TorchFunctionMode):
    """Rewrites the ``training`` and ``momentum`` arguments of every ``F.batch_norm`` call.

    ``training=False`` keeps batch statistics for a call without running statistics, as
    an ``nn.BatchNorm*`` layer in eval mode without running statistics does.
    """

    def __init__(self, training: bool, momentum: float | None) -> None:
        super().__init__()
        self.training = training
        self.momentum = momentum

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        call = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
        call.apply_defaults()
        arg = call.arguments
        arg["training"] = self.training or (arg["running_mean"] is None and arg["running_var"] is None)
        if self.momentum is not None:
            arg["momentum"] = self.momentum
        return func(**arg)


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and its submodules in evaluation mode (BatchNorm on its running statistics, which
    it then leaves alone), each given back the mode it had."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
