"""Inner optimisers: pure ``(init, update)`` pairs on parameter dictionaries (the TorchOpt / optax shape).

The inner loop never hard-wires its update rule: it asks an :class:`InnerOptimizer`
for the updates, adds them with :func:`apply_updates`, and carries the optimiser
state from one step to the next. Everything is out of place, so the adapted
parameters stay a differentiable function of the initial ones, of the inner
gradients (second order) and of tensor hyperparameters such as learned step
sizes; and the state is a pytree, so the same optimiser runs inside ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

StepSize = float | Tensor | Mapping[str, Tensor]
"""A scalar, or one tensor per adapted parameter broadcastable to it (Meta-SGD, per-layer rates)."""

Params = Mapping[str, Tensor]

_ONE_STEP_SIZE = (float, int, Tensor, Mapping)


class InnerOptimizer(NamedTuple):
    """An update rule as two pure functions of parameter dictionaries.

    Both see only the parameters the inner loop updates, by name; the state is
    a pytree (tensors in dicts, tuples or NamedTuples, and Python scalars).

    Attributes:
        init: ``params -> state`` before the first step.
        update: ``(grads, state, params) -> (updates, state)``: the updates have
            the names of ``grads`` and are added to the parameters
            (:func:`apply_updates`). With ``takes_loss`` it is called as
            ``update(grads, state, params, loss)``.
        hyperparameters: the tensors the updates depend on besides the gradients
            (e.g. learned step sizes, a learned optimiser's weights). The inner
            loop builds the graph an outer gradient needs when a parameter or
            one of these requires grad.
        takes_loss: whether ``update`` also reads the support loss at the
            parameters it is given: a detached scalar (under ``vmap``, the
            task's own), as the Meta-learner LSTM's gates do (Ravi & Larochelle,
            2017, Eq. 3-4). ``False`` (the default) keeps the three-argument
            ``update`` of optimisers written before this field existed.
    """

    init: Callable[[Params], Any]
    update: Callable[..., tuple[dict[str, Tensor], Any]]
    hyperparameters: tuple[Tensor, ...] = ()
    takes_loss: bool = False


def apply_updates(params: Params, updates: Params) -> dict[str, Tensor]:
    """``params[name] + updates[name]`` for every name in ``updates``; the other parameters pass through as they are."""
    return {name: p + updates[name] if name in updates else p for name, p in params.items()}


def sgd(step_size: StepSize | Sequence[StepSize]) -> InnerOptimizer:
    """Gradient descent, ``theta - alpha * g``: the inner loop of MAML (Finn et al., 2017).

    The update is ``-(alpha * g)``; IEEE negation is exact, so
    ``theta + (-(alpha * g))`` is bit for bit the ``theta - alpha * g`` of
    :func:`sgd_step` and of earlier releases, and so are its gradients.

    Args:
        step_size: a scalar (float or tensor); a mapping with one tensor per
            updated parameter, shaped like it (Meta-SGD, Li et al., 2017: a
            learned size and direction per weight) or broadcastable to it (a
            learned rate per layer); or a sequence of those, one per inner step
            (MAML++'s per-layer per-step rates, LSLR, Antoniou et al., 2019).
            The state counts the steps taken.

    Raises:
        TypeError: a step size is none of these.
        KeyError: (at the update) a per-parameter mapping lacks an updated parameter.
        ValueError: (at the update) more steps are taken than per-step sizes given.
    """
    per_step = not isinstance(step_size, _ONE_STEP_SIZE)
    sizes = list(step_size) if per_step else [step_size]
    for size in sizes:
        if not isinstance(size, _ONE_STEP_SIZE):
            raise TypeError(f"a step size must be a float, a tensor or a mapping of tensors, got {type(size).__name__}")

    def init(params: Params) -> int:
        return 0

    def update(grads: Params, step: int, params: Params) -> tuple[dict[str, Tensor], int]:
        if per_step and step == len(sizes):
            raise ValueError(f"got {len(sizes)} per-step step sizes for more inner steps; give one per step")
        return _descent(grads, sizes[step] if per_step else step_size), step + 1

    return InnerOptimizer(init, update, _tensors(sizes))


class AdamState(NamedTuple):
    """Adam's state: the steps taken and the running first and second moments of the gradients."""

    count: int
    mu: dict[str, Tensor]
    nu: dict[str, Tensor]


def adam(
    lr: StepSize = 1e-3,
    betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
    eps: float | Tensor = 1e-8,
    eps_root: float | Tensor = 1e-16,
) -> InnerOptimizer:
    """Adam (Kingma & Ba, 2015, Algorithm 1) with bias correction, out of place so that
    second-order gradients flow through it.

    Reptile (Nichol et al., 2018, Section 5 and the hyperparameter tables of the
    appendix) fine-tunes each task with Adam in its inner loop. The update is
    ``-lr * m_hat / (sqrt(v_hat + eps_root) + eps)``, as in TorchOpt and optax.

    ``eps_root`` is there for second order. The derivative of ``sqrt`` is infinite
    at 0, so where a gradient is exactly zero (an unused input, a dead ReLU) the
    meta-gradient is ``inf * 0 = nan`` when ``eps_root = 0``. TorchOpt and optax
    default to 0 and ask meta-learners to set it; the default here, ``1e-16``
    (the default ``eps`` squared), keeps second order finite while moving the
    denominator by at most another ``1e-8``. Pass ``eps_root=0.0`` for ``torch.optim.Adam``'s arithmetic.

    Args:
        lr: the step size: a scalar, or per parameter as in :func:`sgd` (no per-step sequence).
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator.
        eps_root: added to the bias-corrected second moment inside the square root.

    Raises:
        KeyError: (at the update) a per-parameter ``lr`` lacks an updated parameter.
    """
    beta1, beta2 = betas

    def init(params: Params) -> AdamState:
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        return AdamState(0, zeros, dict(zeros))

    def update(grads: Params, state: AdamState, params: Params) -> tuple[dict[str, Tensor], AdamState]:
        count = state.count + 1
        mu = {name: beta1 * state.mu[name] + (1 - beta1) * g for name, g in grads.items()}
        nu = {name: beta2 * state.nu[name] + (1 - beta2) * g * g for name, g in grads.items()}
        mu_correction, nu_correction = 1 - beta1**count, 1 - beta2**count
        directions = {
            name: (mu[name] / mu_correction) / (torch.sqrt(nu[name] / nu_correction + eps_root) + eps) for name in grads
        }
        return _descent(directions, lr), AdamState(count, mu, nu)

    return InnerOptimizer(init, update, _tensors([lr, beta1, beta2, eps, eps_root]))


def _descent(directions: Params, step_size: StepSize) -> dict[str, Tensor]:
    """``-(step_size * direction)`` for every direction, with the step size of its name where it is a mapping.

    Raises:
        KeyError: a per-parameter ``step_size`` lacks a name of ``directions``.
    """
    if isinstance(step_size, Mapping):
        missing = [name for name in directions if name not in step_size]
        if missing:
            raise KeyError(f"per-parameter step sizes are missing for {missing}")
        return {name: -(step_size[name] * d) for name, d in directions.items()}
    return {name: -(step_size * d) for name, d in directions.items()}


def sgd_step(params: Params, grads: Params, step_size: StepSize) -> dict[str, Tensor]:
    """One :func:`sgd` step: ``params[name] - step_size * grads[name]`` for every name in ``grads``;
    other parameters pass through.

    Raises:
        KeyError: a per-parameter ``step_size`` lacks an updated parameter.
    """
    return apply_updates(params, _descent(grads, step_size))


def _tensors(values: Sequence[object]) -> tuple[Tensor, ...]:
    """The tensors among ``values`` and the values of the mappings among them."""
    found: list[Tensor] = []
    for value in values:
        candidates = value.values() if isinstance(value, Mapping) else [value]
        found += [t for t in candidates if isinstance(t, Tensor)]
    return tuple(found)
