"""The vmap fast path gives the losses and meta-gradients of the per-task loop."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lit_meta.errors import NonFiniteLossError
from lit_meta.functional import (
    ScoredTask,
    adam,
    adaptable_parameters,
    batched_adapt_and_score,
    head_parameter_names,
    task_buffers,
)
from lit_meta.functional.batched import ExactNormalizationMode
from tests.functional.conftest import Tasks, make_tasks, run_task, tiny_conv4

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def assert_relatively_close(actual: list[Tensor], expected: list[Tensor], tolerance: float) -> None:
    """``max |actual - expected| <= tolerance * max |expected|`` over all tensors of the list: elementwise
    rtol fails on entries that are zero up to rounding (the gradient of a conv bias followed by BatchNorm)."""
    scale = max(e.abs().max() for e in expected)
    for a, e in zip(actual, expected, strict=True):
        error = (a - e).abs().max() / scale
        assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


def run_batched(net: nn.Module, tasks: Tasks, buffers: str = "task", **settings) -> ScoredTask:
    """``batched_adapt_and_score`` with cross-entropy and the network's own parameters."""
    return batched_adapt_and_score(
        net, adaptable_parameters(net), task_buffers(net, buffers), F.cross_entropy, *tasks, **settings
    )


def loop_and_batched(net, tasks, hyperparameters: Sequence[Tensor] = (), **settings):
    """Per-task reference (one backward per task, gradients accumulated) and the batched path;
    returns ``(loop result, batched result)``, each as (query losses, support losses, outputs, gradients
    of the network's parameters and then of the learned ``hyperparameters``)."""
    learned = [*net.parameters(), *hyperparameters]

    losses, support, outputs = [], [], []
    for task in zip(*tasks, strict=True):
        result = run_task(net, task, **settings)
        (result.query_loss / len(tasks[0])).backward()
        losses.append(result.query_loss.detach())
        support.append(result.support_losses)
        outputs.append(result.query_output.detach())
    loop = (torch.stack(losses), torch.stack(support), torch.stack(outputs), [t.grad.clone() for t in learned])

    for t in learned:
        t.grad = None
    result = run_batched(net, tasks, **settings)
    result.query_loss.mean().backward()
    batched = (
        result.query_loss.detach(),
        result.support_losses,
        result.query_output.detach(),
        [t.grad for t in learned],
    )
    return loop, batched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("variant", ["maml", "anil_meta_sgd", "learned_rate_adam"])
def test_batched_path_equals_the_per_task_loop(dtype, first_order, variant):
    net = tiny_conv4(dtype).train()
    tasks = make_tasks(4, (1, 16, 16), dtype=dtype)
    if variant == "maml":
        settings = {"step_size": 0.4}
    elif variant == "anil_meta_sgd":
        head = head_parameter_names(net)
        step_sizes = {n: torch.full_like(p, 0.3, requires_grad=True) for n, p in net.named_parameters() if n in head}
        settings = {"step_size": step_sizes, "inner_params": head, "hyperparameters": list(step_sizes.values())}
    else:
        lr = torch.tensor(0.01, dtype=dtype, requires_grad=True)
        settings = {"optimizer": adam(lr=lr, betas=(0.8, 0.9)), "hyperparameters": [lr]}
    loop, batched = loop_and_batched(net, tasks, steps=2, first_order=first_order, **settings)
    for expected, actual in zip(loop[:3], batched[:3], strict=True):
        assert_relatively_close([actual], [expected], TOLERANCE[dtype])
    assert_relatively_close(batched[3], loop[3], TOLERANCE[dtype])


def test_batched_evaluation_under_no_grad_equals_the_loop():
    net = tiny_conv4().eval()
    tasks = make_tasks(3, (1, 16, 16))
    with torch.no_grad():
        batched = run_batched(net, tasks, steps=3, step_size=0.4, chunk_size=2)
        loop = [run_task(net, task, steps=3, step_size=0.4) for task in zip(*tasks, strict=True)]
    assert not batched.query_output.requires_grad
    torch.testing.assert_close(
        batched.query_output, torch.stack([r.query_output for r in loop]), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(batched.params["head.bias"], torch.stack([r.params["head.bias"] for r in loop]))


def second_order_gradient_discrepancy(net: nn.Module, exact_normalization: bool) -> float:
    """Max abs difference of the second-order MAML meta-gradient: plain ``vmap`` (optionally under
    :class:`ExactNormalizationMode`) against a per-task loop, both written directly with ``torch.func``."""
    params = dict(net.named_parameters())
    buffers = {n: None for n, _ in net.named_buffers()}
    tasks = make_tasks(3, (1, 4, 4), ways=2)

    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, {**p, **buffers}, (x,)), y)

    def meta_loss(p, support_x, support_y, query_x, query_y):
        g = grad(loss)(p, support_x, support_y)
        return loss({n: p[n] - 0.5 * g[n] for n in p}, query_x, query_y)

    looped = sum(meta_loss(params, *task) for task in zip(*tasks, strict=True))
    with ExactNormalizationMode(second_order=True) if exact_normalization else torch.autograd.set_grad_enabled(True):
        batched = vmap(meta_loss, in_dims=(None, 0, 0, 0, 0))(params, *tasks).sum()
    pairs = zip(
        torch.autograd.grad(looped, list(params.values())),
        torch.autograd.grad(batched, list(params.values())),
        strict=True,
    )
    return max((a - b).abs().max().item() for a, b in pairs)


def net_with(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)).double()


@pytest.mark.parametrize(
    "norm",
    [nn.BatchNorm2d(3), nn.InstanceNorm2d(3, affine=True), nn.LayerNorm([3, 4, 4])],
    ids=["batch_norm", "instance_norm", "layer_norm"],
)
def test_gate_vmap_gets_second_order_gradients_through_fused_normalisation_wrong(norm):
    """Documents the torch bug behind ExactNormalizationMode. If this fails, torch has fixed it:
    the primitive BatchNorm swap and the refusal of LayerNorm / InstanceNorm can go."""
    discrepancy = second_order_gradient_discrepancy(net_with(norm), exact_normalization=False)
    assert discrepancy > 1e-6, (
        f"torch {torch.__version__} now differentiates {type(norm).__name__} twice under vmap exactly "
        f"(discrepancy {discrepancy:.1e}): ExactNormalizationMode's workaround may be removed"
    )


def test_gate_the_primitive_batch_norm_is_exact_under_vmap():
    assert second_order_gradient_discrepancy(net_with(nn.BatchNorm2d(3)), exact_normalization=True) < 1e-12


@pytest.mark.parametrize("norm", [nn.LayerNorm([3, 4, 4]), nn.InstanceNorm2d(3, affine=True)], ids=["ln", "in"])
def test_second_order_batched_path_refuses_inexact_normalisation(norm):
    net = net_with(norm)
    tasks = make_tasks(2, (1, 4, 4), ways=2)
    with pytest.raises(ValueError, match=r"wrong second-order gradients under torch.func.vmap.*use the per-task loop"):
        run_batched(net, tasks, steps=1, step_size=0.1)
    assert run_batched(net, tasks, steps=1, step_size=0.1, first_order=True).query_loss.shape == (2,)
    with torch.no_grad():
        assert run_batched(net, tasks, steps=1, step_size=0.1).query_loss.shape == (2,)


def test_batched_path_refuses_to_update_running_statistics():
    net = tiny_conv4().train()
    tasks = make_tasks(2, (1, 16, 16))
    with pytest.raises(ValueError, match=r"'features\.0\.1' is in train mode and would update its running statistics"):
        run_batched(net, tasks, buffers="running", steps=1, step_size=0.1)


def test_batched_path_names_the_task_whose_inner_loss_blew_up():
    net = tiny_conv4()
    support_x, support_y, query_x, query_y = make_tasks(3, (1, 16, 16))
    support_x = support_x.clone()
    support_x[2, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="at inner step 0 of task 2"):
        run_batched(net, (support_x, support_y, query_x, query_y), steps=1, step_size=0.1)
