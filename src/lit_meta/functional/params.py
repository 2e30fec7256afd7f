"""Parameter and buffer dictionaries of a backbone, and the functional forward pass that takes them.

Learners never mutate a backbone during adaptation: they run it with
:func:`torch.func.functional_call` on task-specific dictionaries. These helpers
build those dictionaries: which parameters adapt (all of them for MAML, only
the head for ANIL) and which buffers BatchNorm sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

BatchNormStatistics = Literal["task", "running"]


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
            statistics are updated in place).

    Returns:
        Every buffer of ``module`` by name; other layers' buffers are the module's own.
    """
    buffers: dict[str, Tensor | None] = dict(module.named_buffers())
    if batch_norm == "task":
        for prefix, child in module.named_modules():
            if isinstance(child, _BatchNorm):
                for name, _ in child.named_buffers(recurse=False):
                    buffers[f"{prefix}.{name}" if prefix else name] = None
    elif batch_norm != "running":
        raise ValueError(f"batch_norm must be 'task' or 'running', got {batch_norm!r}")
    return buffers


def functional_forward(
    module: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor
) -> Tensor:
    """``module(x)`` with ``params`` and ``buffers`` in place of the module's own tensors.

    Parameters or buffers missing from the dictionaries are the module's own.
    The module is left exactly as it was.
    """
    return functional_call(module, {**params, **buffers}, (x,))
