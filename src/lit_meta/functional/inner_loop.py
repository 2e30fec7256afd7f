"""The inner loop of gradient-based meta-learning: steps of an inner optimiser on a parameter dictionary.

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
from torch.utils._pytree import tree_map_only

from lit_meta.errors import NonFiniteLossError
from lit_meta.functional.deprecation import renamed_keyword
from lit_meta.functional.optimizers import InnerOptimizer, StepSize, apply_updates, sgd

LossFn = Callable[[dict[str, Tensor]], Tensor]
"""The support loss of one task as a function of the parameter dictionary."""

Differentiate = Callable[[LossFn, dict[str, Tensor], Sequence[str], bool], tuple[dict[str, Tensor], Tensor]]
"""``(loss_fn, params, names, create_graph) -> (gradients of the named params, loss)``."""

Gradients = Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], Tensor]]
"""``params -> (gradients of the adapted params, support loss)``, taken outside autograd's tape."""


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


@renamed_keyword("adapt", "inner_params")
def adapt(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    *,
    steps: int,
    step_size: StepSize | Sequence[StepSize] | None = None,
    optimizer: InnerOptimizer | None = None,
    first_order: bool = False,
    inner_params: Collection[str] | None = None,
    check_finite: bool = True,
    gradients: Gradients | None = None,
) -> AdaptResult:
    """Take ``steps`` steps of an inner optimiser on ``loss_fn`` from ``params``.

    Second order (MAML, Finn et al., 2017) keeps the graph of each inner
    gradient, so the outer gradient flows through it. First order (FOMAML)
    treats the inner gradients as constants: ``theta' = theta - alpha * g``
    with ``g`` detached, so ``d theta' / d theta = I``, while a learnable
    ``alpha`` (any tensor hyperparameter of the optimiser) still gets its
    gradient through the update.

    When nothing needs an outer gradient (grad mode off, or neither the
    parameters nor the optimiser's hyperparameters require grad, as in
    evaluation) the inner gradients are still taken, under ``torch.enable_grad``,
    from detached views; parameters and optimiser state are detached after
    every step, so memory stays that of one step, and the adapted parameters
    come back detached.

    Args:
        loss_fn: the support loss as a function of the full parameter dictionary.
        params: the parameters to start from (usually the backbone's own).
        steps: number of inner steps.
        step_size: shorthand for ``optimizer=sgd(step_size)``
            (:func:`~lit_meta.functional.optimizers.sgd`): a scalar; a
            per-parameter mapping (Meta-SGD, Li et al., 2017); or a sequence of
            ``steps`` of either, one per step (MAML++'s per-layer per-step
            rates, Antoniou et al., 2019).
        optimizer: the inner optimiser, e.g.
            :func:`~lit_meta.functional.optimizers.adam`; give exactly one of
            ``step_size`` and ``optimizer``. One whose ``takes_loss`` is set
            also reads the detached support loss at every step (the
            Meta-learner LSTM, :mod:`~lit_meta.functional.meta_lstm`).
        first_order: drop the second-order terms.
        inner_params: names of the parameters to update (ANIL: the head's); the
            others are used as they are, still differentiable for the outer
            loop. ``None`` updates every parameter. Formerly ``adapt=``, which
            still works for one release with a ``DeprecationWarning``.
        check_finite: raise :class:`~lit_meta.errors.NonFiniteLossError` if a
            support loss is NaN or infinite. One host synchronisation after the
            loop; pass ``False`` and call :func:`check_finite_losses` on the
            stacked losses of many tasks to synchronise once for all of them.
        gradients: the support loss's gradients and value at given parameters,
            in place of ``torch.autograd.grad`` on ``loss_fn`` (which then goes
            unused), e.g. a compiled
            :func:`~lit_meta.functional.compiled.support_gradients`. Only for
            adaptation that no outer gradient flows through.

    Raises:
        ValueError: both or neither of ``step_size`` and ``optimizer``; a name in
            ``inner_params`` is not in ``params``; ``steps`` and the number
            of per-step step sizes differ; or ``gradients`` is given where an
            outer gradient is wanted.
        RuntimeError: called under ``torch.inference_mode``.
        NonFiniteLossError: see ``check_finite``.
    """
    names = adapted_names(params, inner_params)
    optimizer = inner_optimizer(steps, step_size, optimizer)
    outer = torch.is_grad_enabled() and (
        any(p.requires_grad for p in params.values()) or any(t.requires_grad for t in optimizer.hyperparameters)
    )
    differentiate = autograd_gradients
    if gradients is not None:
        if outer:
            raise ValueError(
                "gradients= takes the inner gradients outside autograd, so no outer gradient can flow through them; "
                "use it for evaluation (detached parameters, or under torch.no_grad()), not for meta-training"
            )
        differentiate = _given_gradients(gradients)
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
            optimizer,
            steps=steps,
            differentiate=differentiate,
            create_graph=outer and not first_order,
            detach_each_step=not outer,
        )
    if not outer:
        result = AdaptResult({n: p.detach() for n, p in result.params.items()}, result.support_losses)
    if check_finite:
        check_finite_losses(result.support_losses)
    return result


def inner_optimizer(
    steps: int, step_size: StepSize | Sequence[StepSize] | None, optimizer: InnerOptimizer | None
) -> InnerOptimizer:
    """``optimizer``, or :func:`~lit_meta.functional.optimizers.sgd` of ``step_size``, whose per-step
    sizes must number ``steps``; exactly one of the two must be given."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if (step_size is None) == (optimizer is None):
        given = "neither" if step_size is None else "both"
        raise ValueError(
            f"give exactly one of step_size= (plain SGD) and optimizer= (an InnerOptimizer, e.g. adam()), got {given}"
        )
    if optimizer is not None:
        return optimizer
    if isinstance(step_size, Sequence) and len(step_size) != steps:
        raise ValueError(f"got {len(step_size)} per-step step sizes for {steps} inner steps; give one per step")
    return sgd(step_size)


def inner_loop(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    names: Sequence[str],
    optimizer: InnerOptimizer,
    *,
    steps: int,
    differentiate: Differentiate,
    create_graph: bool,
    detach_each_step: bool = False,
) -> AdaptResult:
    """The loop shared by :func:`adapt` and the batched path, which differ only in how they differentiate.

    Each step asks ``optimizer.update`` for the updates at the current parameters;
    an optimiser with ``takes_loss`` also gets the detached support loss there.
    ``detach_each_step`` cuts the graph of the parameters and of the optimiser
    state between steps (no outer gradient wanted), so memory stays that of one step.

    Raises:
        RuntimeError: called under ``torch.inference_mode``, which disables autograd.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "the inner loop needs autograd, which torch.inference_mode disables (Lightning validates, tests and "
            "predicts under it): decorate the step with @lit_meta.functional.enable_adaptation_grad(), which also "
            "clones the batch's inference tensors, or adapt inside `with enable_adaptation_grad() as ready:` on "
            "ready(batch)"
        )
    state = optimizer.init({n: params[n] for n in names})
    losses = []
    for _ in range(steps):
        grads, loss = differentiate(loss_fn, params, names, create_graph)
        losses.append(loss.detach())
        current = {n: params[n] for n in names}
        if optimizer.takes_loss:
            updates, state = optimizer.update(grads, state, current, loss.detach())
        else:
            updates, state = optimizer.update(grads, state, current)
        params = apply_updates(params, updates)
        if detach_each_step:
            params = {n: _leaf(p) if n in updates else p for n, p in params.items()}
            # the state is a pytree, flattened with the utilities torch.func uses for its arguments
            state = tree_map_only(Tensor, Tensor.detach, state)
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


def func_gradients(
    loss_fn: LossFn, params: dict[str, Tensor], names: Sequence[str], create_graph: bool
) -> tuple[dict[str, Tensor], Tensor]:
    """Gradients by ``torch.func.grad_and_value``, which works under ``vmap`` and ``torch.compile``.

    Without ``create_graph`` the gradients are detached from the outer graph (first order).
    """
    adapted = {n: params[n] for n in names}
    fixed = {n: p for n, p in params.items() if n not in adapted}
    grads, loss = torch.func.grad_and_value(lambda a: loss_fn({**fixed, **a}))(adapted)
    if not create_graph:
        grads = {n: g.detach() for n, g in grads.items()}
    return grads, loss


def _given_gradients(gradients: Gradients) -> Differentiate:
    def differentiate(
        loss_fn: LossFn, params: dict[str, Tensor], names: Sequence[str], create_graph: bool
    ) -> tuple[dict[str, Tensor], Tensor]:
        return gradients(params)

    return differentiate


def adapted_names(params: Mapping[str, Tensor], inner_params: Collection[str] | None) -> list[str]:
    """The names to update, in the order of ``params``; checks that each one exists."""
    if inner_params is None:
        return list(params)
    unknown = sorted(set(inner_params) - set(params))
    if unknown:
        raise ValueError(f"cannot adapt {unknown}: no such parameters; the parameters are {list(params)}")
    return [n for n in params if n in inner_params]


def _leaf(p: Tensor) -> Tensor:
    return p.detach().requires_grad_()


def _device(params: Mapping[str, Tensor]) -> torch.device | None:
    return next(iter(params.values())).device if params else None


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
