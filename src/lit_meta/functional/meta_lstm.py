"""The Meta-learner LSTM (Ravi & Larochelle, 2017) as an inner optimiser: a learned update rule.

Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017, Section 3
and Figure 2; the authors' code is twitter/meta-learning-lstm (``model/lstm/``). The
update of gradient descent, ``theta_t = theta_{t-1} - alpha * grad_t``, is an LSTM cell
update ``c_t = f_t * c_{t-1} + i_t * c~_t`` with ``c_t = theta_t``, ``f_t = 1``,
``i_t = alpha`` and ``c~_t = -grad_t`` (Eq. 2). The meta-learner learns the gates instead:

* layer 1, an ordinary LSTM (hidden size 20 in the authors' code) run on every coordinate
  of the learner's parameters separately, with weights shared by all coordinates
  (Section 3.3), reads the preprocessed gradient of that coordinate and the preprocessed
  support loss (:func:`preprocess`; the loss is one scalar per task, the same for every
  coordinate);
* layer 2 is the special cell whose cell state *is* the learner's parameters (Eq. 2-4)::

      i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)
      f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)
      theta_t = f_t * theta_{t-1} - i_t * grad_t

  where ``h_t`` is layer 1's output for the coordinate (the paper writes the gradient and
  the loss there; the authors' code feeds layer 1's output, as here).

The gradient and the loss the LSTM reads are detached: "second derivatives" through the
learner's gradient are ignored (Section 3.2, the dashed lines of Figure 2). The path
``theta_t = f_t * theta_{t-1} - i_t * grad_t`` stays differentiable with respect to the
LSTM's weights and to ``theta_0``, the learned initial cell state, which is the learner's
initial parameters (the backbone's, meta-learned by the outer loop).

Initialisation follows the authors' code (``getMetaLearner`` in
``model/lstm/meta-learner-lstm.lua``): every weight and bias from U(-0.01, 0.01), then the
forget bias from U(4, 5) and the input bias from U(-5, -4), so that meta-training starts
close to gradient descent (``f ~ 0.99``) with a small step (``i ~ 0.01``).

Deviation: the previous gates ``i_{t-1}``, ``f_{t-1}`` are the gate values (in [0, 1]) of
the paper's Eq. 3-4; the authors' code feeds back their pre-activations. Both start at 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_meta.functional.optimizers import InnerOptimizer

PREPROCESSING_POWER = 10.0
"""``p`` of the gradient preprocessing (Andrychowicz et al., 2016, Appendix A; Ravi & Larochelle, Section 3.3)."""
WEIGHT_INIT_RANGE = 0.01
"""Every weight and bias starts in U(-0.01, 0.01) (the authors' code) before the gate biases are set."""


def preprocess(x: Tensor, p: float = PREPROCESSING_POWER) -> Tensor:
    """The gradient preprocessing of Andrychowicz et al. (2016, Appendix A), used by Ravi & Larochelle (2017,
    Section 3.3) for the gradients and the loss: ``x -> (log(|x|) / p, sign(x))`` if ``|x| >= e^-p``, else
    ``(-1, e^p x)``. Both branches agree at ``|x| = e^-p``.

    Args:
        x: any shape.
        p: the power; 10 in both papers.

    Returns:
        ``[*x.shape, 2]``.
    """
    threshold = math.exp(-p)
    large = x.abs() >= threshold
    magnitude = torch.where(large, x.abs().clamp_min(threshold).log() / p, -torch.ones_like(x))
    direction = torch.where(large, x.sign(), x * math.exp(p))
    return torch.stack([magnitude, direction], dim=-1)


class MetaLSTMState(NamedTuple):
    """The meta-learner's state for every coordinate of the adapted parameters (flattened in their order).

    Attributes:
        hidden: layer 1's hidden state ``h_{t-1}``, ``[coordinates, hidden_size]``.
        cell: layer 1's cell state, ``[coordinates, hidden_size]``.
        input_gate: layer 2's previous input gate ``i_{t-1}``, ``[coordinates]``.
        forget_gate: layer 2's previous forget gate ``f_{t-1}``, ``[coordinates]``.
    """

    hidden: Tensor
    cell: Tensor
    input_gate: Tensor
    forget_gate: Tensor


class MetaLSTMOptimizer(nn.Module):
    """The two-layer coordinate-wise Meta-learner LSTM's weights, and the inner optimiser they define.

    Layer 2's cell state, the learner's parameters, is not held here: the inner loop
    passes the current parameters to every update, and starts from the backbone's.

    Args:
        hidden_size: layer 1's hidden units (20 in the authors' code).
        input_bias_init: the range ``b_I`` is drawn from; ``sigmoid`` of it is the initial step size.
        forget_bias_init: the range ``b_F`` is drawn from; ``sigmoid`` of it is the initial
            weight kept of the previous parameters.

    Raises:
        ValueError: ``hidden_size < 1``, or a range whose low end is above its high end.
    """

    def __init__(
        self,
        hidden_size: int = 20,
        input_bias_init: tuple[float, float] = (-5.0, -4.0),
        forget_bias_init: tuple[float, float] = (4.0, 5.0),
    ) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size}: the LSTM needs at least one hidden unit")
        for name, (low, high) in (("input_bias_init", input_bias_init), ("forget_bias_init", forget_bias_init)):
            if low > high:
                raise ValueError(f"{name}=({low}, {high}): give the range as (low, high)")
        self.hidden_size = hidden_size
        # layer 1: [preprocessed loss (2), preprocessed gradient (2), h_{t-1}] -> the four LSTM gates
        self.lstm = nn.Linear(4 + hidden_size, 4 * hidden_size)
        # layer 2: [h_t, theta_{t-1}, previous gate] -> the gate
        self.input_gate = nn.Linear(hidden_size + 2, 1)
        self.forget_gate = nn.Linear(hidden_size + 2, 1)
        with torch.no_grad():
            for weight in self.parameters():
                weight.uniform_(-WEIGHT_INIT_RANGE, WEIGHT_INIT_RANGE)
            self.input_gate.bias.uniform_(*input_bias_init)
            self.forget_gate.bias.uniform_(*forget_bias_init)

    def inner_optimizer(self) -> InnerOptimizer:
        """This LSTM as an :class:`~lit_meta.functional.InnerOptimizer` (``takes_loss``) for
        :func:`~lit_meta.functional.adapt` and the batched path; its weights are the hyperparameters,
        so the inner loop keeps the graph their meta-gradient needs."""
        return InnerOptimizer(self.init_state, self.update, tuple(self.parameters()), takes_loss=True)

    def init_state(self, params: Mapping[str, Tensor]) -> MetaLSTMState:
        """Zero states for every coordinate of ``params``, as in the authors' code."""
        coordinates = sum(p.numel() for p in params.values())
        weight = self.lstm.weight
        zeros = weight.new_zeros(coordinates, self.hidden_size, device=_device(params, weight))
        gates = weight.new_zeros(coordinates, device=zeros.device)
        return MetaLSTMState(zeros, zeros, gates, gates)

    def update(
        self, grads: Mapping[str, Tensor], state: MetaLSTMState, params: Mapping[str, Tensor], loss: Tensor
    ) -> tuple[dict[str, Tensor], MetaLSTMState]:
        """One step: ``theta_t - theta_{t-1}`` for every parameter of ``grads``, and the next state.

        Args:
            grads: the support-loss gradients at ``params``; read detached.
            state: the state after the previous step (:meth:`init_state` before the first).
            params: ``theta_{t-1}``, by name; differentiable.
            loss: the support loss at ``params``, a scalar; read detached.
        """
        names = list(grads)
        dtype = self.lstm.weight.dtype
        grad = _flat([grads[n] for n in names]).detach()
        theta = _flat([params[n] for n in names])
        features = torch.cat(
            [preprocess(loss.detach().to(dtype)).expand(grad.shape[0], 2), preprocess(grad.to(dtype))], dim=-1
        )
        gates, candidate = self.lstm(torch.cat([features, state.hidden], dim=-1)).split(
            [3 * self.hidden_size, self.hidden_size], dim=-1
        )
        remember, forget, write = torch.sigmoid(gates).chunk(3, dim=-1)
        cell = forget * state.cell + remember * torch.tanh(candidate)
        hidden = write * torch.tanh(cell)
        theta_in = theta.to(dtype).unsqueeze(-1)
        input_gate = torch.sigmoid(
            self.input_gate(torch.cat([hidden, theta_in, state.input_gate.unsqueeze(-1)], dim=-1))
        ).squeeze(-1)
        forget_gate = torch.sigmoid(
            self.forget_gate(torch.cat([hidden, theta_in, state.forget_gate.unsqueeze(-1)], dim=-1))
        ).squeeze(-1)
        # theta_t - theta_{t-1}, written so that f = 1 gives exactly -(i * grad): SGD's update, bit for bit
        step = ((forget_gate - 1) * theta - input_gate * grad).to(theta.dtype)
        sizes = [grads[n].numel() for n in names]
        updates = {n: part.view_as(grads[n]) for n, part in zip(names, step.split(sizes), strict=True)}
        return updates, MetaLSTMState(hidden, cell, input_gate, forget_gate)


def _flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _device(params: Mapping[str, Tensor], fallback: Tensor) -> torch.device:
    return next(iter(params.values())).device if params else fallback.device
