"""The inner loop of gradient-based meta-learning: SGD steps on a parameter dictionary.

``adapt`` is a pure function of ``(loss_fn, params) -> params``: it never
touches a module, so the adapted parameters are a differentiable function of
the initial ones (and of learnable step sizes) and the outer loop can
backpropagate through them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_meta.errors import NonFiniteLossError

StepSize = float | Tensor | Mapping[str, Tensor]
"""A scalar, or one tensor per adapted parameter broadcastable to it (Meta-SGD, per-layer rates)."""

LossFn = Callable[[dict[str, Tensor]], Tensor]
"""The support loss of one task as a function of the parameter dictionary."""

Differentiate = Callable[[LossFn, dict[str, Tensor], Sequence[str], bool], tuple[dict[str, Tensor], Tensor]]
"""``(loss_fn, params, names, create_graph) -> (gradients of the named params, loss)``."""


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt` returns.

    Attributes:
        params: the adapted parameters; parameters that were not adapted are the
            very tensors that were passed in.
        support_losses: ``[steps]``, detached: the support loss before each inner step.
    """

    params: dict[str, Tensor]
    support_losses: Tensor


def sgd_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], step_size: StepSize) -> dict[str, Tensor]:
    """``params[name] - step_size * grads[name]`` for every name in ``grads``; other parameters pass through.

    Args:
        params: the current parameters.
        grads: gradients of the parameters to update.
        step_size: a scalar, or a mapping with one tensor per updated parameter,
            shaped like it (Meta-SGD: a learned size and direction per weight) or
            broadcastable to it (a learned rate per layer).

    Raises:
        KeyError: a per-parameter ``step_size`` lacks an updated parameter.
    """
    if isinstance(step_size, Mapping):
        missing = [name for name in grads if name not in step_size]
        if missing:
            raise KeyError(f"per-parameter step sizes are missing for {missing}")
        return {name: p - step_size[name] * grads[name] if name in grads else p for name, p in params.items()}
    return {name: p - step_size * grads[name] if name in grads else p for name, p in params.items()}


def adapt(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    *,
    steps: int,
    step_size: StepSize | Sequence[StepSize],
    first_order: bool = False,
    adapt: Collection[str] | None = None,
    check_finite: bool = True,
) -> AdaptResult:
    """Take ``steps`` gradient steps on ``loss_fn`` from ``params``.

    Second order (MAML, Finn et al., 2017) keeps the graph of each inner
    gradient, so the outer gradient flows through it. First order (FOMAML)
    treats the inner gradients as constants: ``theta' = theta - alpha * g``
    with ``g`` detached, so ``d theta' / d theta = I``, while a learnable
    ``alpha`` still gets its gradient through ``alpha * g``.

    When nothing needs an outer gradient (grad mode off, or neither the
    parameters nor the step sizes require grad, as in evaluation) the inner
    gradients are still taken, under ``torch.enable_grad``, from detached
    views, and the adapted parameters come back detached.

    Args:
        loss_fn: the support loss as a function of the full parameter dictionary.
        params: the parameters to start from (usually the backbone's own).
        steps: number of inner steps.
        step_size: a scalar; a per-parameter mapping (Meta-SGD, Li et al., 2017);
            or a sequence of ``steps`` of either, one per step (MAML++'s
            per-layer per-step rates, Antoniou et al., 2019).
        first_order: drop the second-order terms.
        adapt: names of the parameters to update (ANIL: the head's); the others
            are used as they are, still differentiable for the outer loop.
            ``None`` updates every parameter.
        check_finite: raise :class:`~lit_meta.errors.NonFiniteLossError` if a
            support loss is NaN or infinite. One host synchronisation after the
            loop; pass ``False`` and call :func:`check_finite_losses` on the
            stacked losses of many tasks to synchronise once for all of them.

    Raises:
        ValueError: a name in ``adapt`` is not in ``params``, or ``steps`` and
            the number of per-step step sizes differ.
        RuntimeError: called under ``torch.inference_mode``.
        NonFiniteLossError: see ``check_finite``.
    """
    names = adapted_names(params, adapt)
    step_sizes = per_step_sizes(step_size, steps)
    outer = torch.is_grad_enabled() and (
        any(p.requires_grad for p in params.values()) or any(_requires_grad(s) for s in step_sizes)
    )
    with torch.enable_grad():
        if outer:
            # an adapted tensor outside the outer graph (a frozen weight) still needs an inner gradient
            start = {n: _leaf(p) if n in names and not p.requires_grad else p for n, p in params.items()}
        else:
            start = {n: p.detach().requires_grad_(n in names) for n, p in params.items()}
        result = inner_loop(
            loss_fn,
            start,
            names,
            step_sizes,
            differentiate=autograd_gradients,
            create_graph=outer and not first_order,
            detach_each_step=not outer,
        )
    if not outer:
        result = AdaptResult({n: p.detach() for n, p in result.params.items()}, result.support_losses)
    if check_finite:
        check_finite_losses(result.support_losses)
    return result


def inner_loop(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    names: Sequence[str],
    step_sizes: Sequence[StepSize],
    *,
    differentiate: Differentiate,
    create_graph: bool,
    detach_each_step: bool = False,
) -> AdaptResult:
    """The loop shared by :func:`adapt` and the batched path, which differ only in how they differentiate.

    ``detach_each_step`` cuts the graph between steps (no outer gradient wanted),
    so memory stays that of one step.

    Raises:
        RuntimeError: called under ``torch.inference_mode``, which disables autograd.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "the inner loop needs autograd, which torch.inference_mode disables (Lightning validates and tests "
            "under it): adapt inside `with torch.inference_mode(False):` and clone the tensors made in inference "
            "mode (the batch) there first"
        )
    losses = []
    for step_size in step_sizes:
        grads, loss = differentiate(loss_fn, params, names, create_graph)
        losses.append(loss.detach())
        params = sgd_step(params, grads, step_size)
        if detach_each_step:
            params = {n: _leaf(p) if n in grads else p for n, p in params.items()}
    return AdaptResult(params, torch.stack(losses) if losses else torch.zeros(0, device=_device(params)))


def autograd_gradients(
    loss_fn: LossFn, params: dict[str, Tensor], names: Sequence[str], create_graph: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """Gradients by ``torch.autograd.grad``; unused parameters get zeros, as with ``torch.func.grad``."""
    loss = loss_fn(params)
    grads = torch.autograd.grad(
        loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    return dict(zip(names, grads, strict=True)), loss


def adapted_names(params: Mapping[str, Tensor], adapt: Collection[str] | None) -> list[str]:
    """The names to update, in the order of ``params``; checks that each one exists."""
    if adapt is None:
        return list(params)
    unknown = sorted(set(adapt) - set(params))
    if unknown:
        raise ValueError(f"cannot adapt {unknown}: no such parameters; the parameters are {list(params)}")
    return [n for n in params if n in adapt]


def per_step_sizes(step_size: StepSize | Sequence[StepSize], steps: int) -> list[StepSize]:
    """One step size per inner step: ``step_size`` repeated, or the given per-step sequence."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(step_size, (float, int, Tensor, Mapping)):
        return [step_size] * steps
    sizes = list(step_size)
    if len(sizes) != steps:
        raise ValueError(f"got {len(sizes)} per-step step sizes for {steps} inner steps; give one per step")
    for size in sizes:
        if not isinstance(size, (float, int, Tensor, Mapping)):
            raise TypeError(f"a step size must be a float, a tensor or a mapping of tensors, got {type(size).__name__}")
    return sizes


def _leaf(p: Tensor) -> Tensor:
    return p.detach().requires_grad_()


def _device(params: Mapping[str, Tensor]) -> torch.device | None:
    return next(iter(params.values())).device if params else None


def _requires_grad(step_size: StepSize) -> bool:
    if isinstance(step_size, Mapping):
        return any(isinstance(s, Tensor) and s.requires_grad for s in step_size.values())
    return isinstance(step_size, Tensor) and step_size.requires_grad


def check_finite_losses(support_losses: Tensor) -> None:
    """Raise :class:`~lit_meta.errors.NonFiniteLossError` if an inner loss is NaN or infinite.

    Args:
        support_losses: ``[steps]`` or ``[tasks, steps]``, as in :class:`AdaptResult`.
            Only the failure path reads more than one value from the device.
    """
    finite = torch.isfinite(support_losses)
    if bool(finite.all()):
        return
    index = tuple(int(i) for i in (~finite).nonzero()[0])
    step = index[-1]
    where = f"at inner step {step}" + (f" of task {index[0]}" if len(index) > 1 else "")
    value = support_losses[index].item()
    if step == 0:
        hint = "before any inner update, so check the input data and the initial weights"
    else:
        hint = (
            f"after {step} inner update(s) with finite losses before, so the inner learning rate (step size) "
            "is too high for this network: lower it, e.g. by a factor of 10, or use fewer inner steps"
        )
    raise NonFiniteLossError(f"the inner-loop support loss is {value} {where}, {hint}")
