"""The Meta-learner LSTM as an inner optimiser: gradient descent as a special case, the preprocessing,
and a first-order meta-gradient that reaches the LSTM's weights and the initial parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.functional import (
    MetaLSTMOptimizer,
    adaptable_parameters,
    batched_adapt_and_score,
    functional_forward,
    sgd,
    task_buffers,
)
from lit_meta.functional.meta_lstm import preprocess
from tests.functional.conftest import make_tasks, run_task, tiny_conv4, tiny_mlp


def constant_gates(forget_logit: float, input_logit: float, dtype: torch.dtype = torch.float64) -> MetaLSTMOptimizer:
    """A meta-learner whose gates ignore their inputs: ``f = sigmoid(forget_logit)``, ``i = sigmoid(input_logit)``."""
    torch.manual_seed(1)
    lstm = MetaLSTMOptimizer(hidden_size=5).to(dtype)
    with torch.no_grad():
        for gate, logit in ((lstm.forget_gate, forget_logit), (lstm.input_gate, input_logit)):
            gate.weight.zero_()
            gate.bias.fill_(logit)
    return lstm


def test_preprocessing_takes_log_and_sign_of_large_values_and_scales_small_ones():
    p = 10.0
    x = torch.tensor([1.0, -(math.e**2), math.exp(-p), 1e-6, -2e-5, 0.0], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.0, 1.0],  # |x| >= e^-p: (log|x| / p, sign x)
            [0.2, -1.0],
            [-1.0, 1.0],  # at the threshold both branches agree
            [-1.0, 1e-6 * math.exp(p)],  # below: (-1, e^p x)
            [-1.0, -2e-5 * math.exp(p)],
            [-1.0, 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(preprocess(x, p), expected, rtol=1e-12, atol=1e-12)
    assert preprocess(torch.zeros(3, 4)).shape == (3, 4, 2)


@pytest.mark.parametrize("net_factory", [tiny_mlp, tiny_conv4], ids=["mlp", "conv4"])
def test_with_the_forget_gate_at_one_and_a_constant_input_gate_it_is_gradient_descent(net_factory):
    """``f = 1`` and ``i = a`` give ``theta - a * grad`` (Eq. 2), over several steps, per task and under vmap."""
    net = net_factory()
    item_shape = (4,) if net_factory is tiny_mlp else (1, 16, 16)
    tasks = make_tasks(2, item_shape)
    input_logit = math.log(0.3 / 0.7)
    lstm = constant_gates(forget_logit=100.0, input_logit=input_logit)  # sigmoid(100) is 1.0 in float64
    step_size = torch.sigmoid(torch.tensor(input_logit, dtype=torch.float64))
    params = adaptable_parameters(net)
    task = tuple(t[0] for t in tasks)
    learned = run_task(net, task, steps=4, optimizer=lstm.inner_optimizer())
    descent = run_task(net, task, steps=4, optimizer=sgd(step_size))
    assert descent.support_losses[-1] < descent.support_losses[0]
    for name in params:
        torch.testing.assert_close(learned.params[name], descent.params[name], rtol=0, atol=1e-14)
    common = (net, params, task_buffers(net), F.cross_entropy, *tasks)
    batched = batched_adapt_and_score(*common, steps=4, optimizer=lstm.inner_optimizer(), first_order=True)
    batched_descent = batched_adapt_and_score(*common, steps=4, step_size=step_size, first_order=True)
    for name in params:
        torch.testing.assert_close(batched.params[name], batched_descent.params[name], rtol=0, atol=1e-12)


def query_gradients(net: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
    loss = F.cross_entropy(functional_forward(net, leaves, task_buffers(net), x), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def test_the_meta_gradient_takes_no_second_order_term():
    """With gates that ignore their inputs, ``theta_T = f^T theta_0 - sum_t f^(T-1-t) i grad_t`` with the
    gradients constant, so ``dL/dtheta_0 = f^T dL/dtheta_T``: a Hessian term would change it. ``dL/db_I``
    after one step is ``sum(dL/dtheta_1 * -grad_0) * i (1 - i)``."""
    net = tiny_mlp()
    task = tuple(t[0] for t in make_tasks(1, (4,)))
    lstm = constant_gates(forget_logit=2.0, input_logit=-1.0)
    f, i = torch.sigmoid(torch.tensor([2.0, -1.0], dtype=torch.float64))
    start = {n: p.detach().requires_grad_() for n, p in adaptable_parameters(net).items()}
    for first_order in (True, False):  # the LSTM reads detached gradients whatever the loop is asked
        for steps in (1, 3):
            result = run_task(net, task, start, steps=steps, optimizer=lstm.inner_optimizer(), first_order=first_order)
            meta_grads = torch.autograd.grad(result.query_loss, [*start.values(), lstm.input_gate.bias])
            at_end = query_gradients(net, result.params, task[2], task[3])
            for (name, grad), meta_grad in zip(at_end.items(), meta_grads, strict=False):
                torch.testing.assert_close(meta_grad, f**steps * grad, rtol=1e-12, atol=1e-15, msg=name)
            if steps == 1:
                inner = query_gradients(net, start, task[0], task[1])
                expected = -sum((at_end[n] * inner[n]).sum() for n in start) * i * (1 - i)
                torch.testing.assert_close(meta_grads[-1], expected.reshape(1), rtol=1e-10, atol=1e-15)


def test_the_meta_gradient_reaches_every_lstm_weight_and_the_initial_parameters():
    net = tiny_conv4(torch.float32)
    task = tuple(t[0] for t in make_tasks(1, (1, 16, 16), dtype=torch.float32))
    torch.manual_seed(0)
    lstm = MetaLSTMOptimizer()
    result = run_task(net, task, steps=3, optimizer=lstm.inner_optimizer(), first_order=True)
    assert result.support_losses.shape == (3,)
    learned = [*net.parameters(), *lstm.parameters()]
    grads = torch.autograd.grad(result.query_loss, learned, allow_unused=True)
    names = [f"backbone.{n}" for n, _ in net.named_parameters()] + [f"lstm.{n}" for n, _ in lstm.named_parameters()]
    reached = {name for name, g in zip(names, grads, strict=True) if g is not None and bool(g.abs().sum() > 0)}
    assert {n for n in names if n.startswith("lstm.")} <= reached
    assert "backbone.head.weight" in reached and "backbone.features.0.0.weight" in reached


def test_the_initial_update_is_a_small_gradient_step_with_a_forget_gate_near_one():
    """The authors' initialisation: ``b_F ~ U(4, 5)``, ``b_I ~ U(-5, -4)``, weights in U(-0.01, 0.01)."""
    torch.manual_seed(0)
    lstm = MetaLSTMOptimizer()
    assert 4 <= lstm.forget_gate.bias.item() <= 5 and -5 <= lstm.input_gate.bias.item() <= -4
    assert all(w.abs().max() <= 0.01 for w in (lstm.lstm.weight, lstm.input_gate.weight, lstm.forget_gate.weight))
    params = {"w": torch.randn(50)}
    grads = {"w": torch.randn(50)}
    optimizer = lstm.inner_optimizer()
    with torch.no_grad():
        updates, state = optimizer.update(grads, optimizer.init(params), params, torch.tensor(1.5))
    assert optimizer.takes_loss and state.hidden.shape == (50, 20)
    assert ((state.forget_gate > 0.98) & (state.forget_gate < 1)).all()
    assert ((state.input_gate > 0.005) & (state.input_gate < 0.02)).all()
    torch.testing.assert_close(
        updates["w"], (state.forget_gate - 1) * params["w"] - state.input_gate * grads["w"], rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden_size": 0}, "hidden_size=0"),
        ({"input_bias_init": (-4.0, -5.0)}, r"input_bias_init=\(-4.0, -5.0\): give the range as \(low, high\)"),
    ],
)
def test_bad_settings_are_refused_with_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        MetaLSTMOptimizer(**settings)
