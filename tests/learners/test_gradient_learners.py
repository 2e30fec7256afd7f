"""MAML, FOMAML, ANIL, Meta-SGD, MAML++ options and Reptile as LightningModules."""

from __future__ import annotations

import logging
import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_meta import glibc_malloc
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import EpisodeBatch, collate_episodes
from lit_meta.errors import EpisodeConfigError
from lit_meta.functional import adaptable_parameters, functional_forward, task_buffers
from lit_meta.learners import ANIL, MAML, MetaSGD, ProtoNet, Reptile
from lit_meta.learners.execution import TIMED_TRIAL_STEPS
from lit_meta.learners.gradient import EXECUTION_PATH_KEY, _release_trial_memory
from lit_meta.learners.reptile import inner_minibatches

from ..conftest import TinyImages, two_spawned_cpu_processes


def small_net(ways: int = 3, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A conv + BatchNorm + linear net for 1x8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, ways),
    ).to(dtype)  # fmt: skip


def datamodule(**kwargs) -> EpisodicDataModule:
    settings = dict(ways=3, shots=2, queries=2, meta_batch_size=4, train_episodes=8, val_episodes=4, test_episodes=8)
    return EpisodicDataModule(TinyImages(), **{**settings, **kwargs})


def a_batch(dtype: torch.dtype = torch.float32, tasks: int = 4) -> EpisodeBatch:
    dm = datamodule(meta_batch_size=tasks)
    dm.setup("fit")
    return next(iter(dm.train_dataloader())).to(dtype)


def trainer(**kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def reference_meta_gradient(learner: MAML, batch: EpisodeBatch, first_order: bool) -> list[torch.Tensor]:
    """The textbook computation: adapt each task, average the query losses, one backward."""
    net = learner.backbone
    params = adaptable_parameters(net)
    buffers = task_buffers(net)
    losses = []
    for ep in batch:
        p = params
        for _ in range(learner.hparams.inner_steps):
            loss = F.cross_entropy(functional_forward(net, p, buffers, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=not first_order)
            p = {n: w - learner.hparams.inner_lr * g for (n, w), g in zip(p.items(), grads, strict=True)}
        losses.append(F.cross_entropy(functional_forward(net, p, buffers, ep.query_x), ep.query_y))
    return list(torch.autograd.grad(torch.stack(losses).mean(), list(params.values())))


@pytest.mark.parametrize("first_order", [False, True])
def test_per_task_backward_gives_the_reference_meta_gradient(first_order):
    batch = a_batch(torch.float64)
    learner = MAML(small_net(dtype=torch.float64), inner_lr=0.3, inner_steps=2, first_order=first_order)
    expected = reference_meta_gradient(learner, batch, first_order)
    learner.meta_loss(batch).backward()
    for p, g in zip(learner.backbone.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fast_path", ["vmap", "compiled"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fast_execution_paths_match_the_loop(fast_path, first_order, dtype, rtol):
    batch = a_batch(dtype)
    grads = {}
    for execution in ("loop", fast_path):
        learner = MAML(
            small_net(dtype=dtype), inner_lr=0.3, inner_steps=2, first_order=first_order, execution=execution
        )
        loss = learner.meta_loss(batch)
        loss.backward()
        grads[execution] = (loss.detach(), [p.grad for p in learner.parameters()])
    torch.testing.assert_close(grads["loop"][0], grads[fast_path][0], rtol=rtol, atol=0)
    # Relative to the meta-gradient's scale: the conv bias before BatchNorm has a true gradient of 0.
    scale = max(float(g.abs().max()) for g in grads["loop"][1])
    for a, b in zip(grads["loop"][1], grads[fast_path][1], strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


def test_compiled_path_trains_under_the_trainer_and_the_learner_still_pickles(tmp_path):
    learner = MAML(small_net(), inner_lr=0.3, execution="compiled")
    before = [p.detach().clone() for p in learner.parameters()]
    t = trainer(max_steps=2, limit_val_batches=1, default_root_dir=tmp_path)
    t.fit(learner, datamodule())
    assert all(not torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
    assert learner._compiled_query is not None
    copy = pickle.loads(pickle.dumps(learner))  # DDP spawn and deepcopy pickle the module
    assert copy._compiled_query is None
    ep = a_batch()[0]
    torch.testing.assert_close(
        copy.adapt(ep.support_x, ep.support_y)(ep.query_x), learner.adapt(ep.support_x, ep.support_y)(ep.query_x)
    )


def test_auto_execution_picks_a_path_once_logs_it_and_keeps_it_in_checkpoints(tmp_path, caplog):
    """``execution="auto"`` plans on the first training batch, says in the log what it chose and
    why, and keeps that path for the run and in checkpoints, so a resumed run takes the same one."""
    learner = MAML(small_net(), inner_lr=0.3, execution="auto")
    t = trainer(max_steps=2, limit_val_batches=0)
    with caplog.at_level(logging.INFO):
        t.fit(learner, datamodule())
    path = learner._measured_path
    assert path in ("loop", "vmap")  # two short steps never pay for compiling
    assert caplog.text.count("MAML: meta-training on the") == 1
    assert f"MAML: meta-training on the {path} path (measured per step: loop " in caplog.text
    assert "compiled not tried" in caplog.text
    t.save_checkpoint(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)[EXECUTION_PATH_KEY] == path
    assert MAML.load_from_checkpoint(tmp_path / "last.ckpt")._measured_path == path


def test_auto_gives_memory_back_after_the_vmap_estimate_and_every_trial(monkeypatch):
    """Retained freed memory of one trial must not stay resident under the next (it set a Conv4
    run's peak): after the one-task estimate and after each path's trial, memory goes back."""
    events = []

    class Recording(MAML):
        def meta_loss_on_path(self, batch, path):
            events.append((path, len(batch)))
            return super().meta_loss_on_path(batch, path)

    monkeypatch.setattr(glibc_malloc, "_retaining", True)
    monkeypatch.setattr(glibc_malloc, "return_free_pages", lambda: events.append("give back"))
    learner = Recording(small_net(), inner_lr=0.3, vmap_memory_budget_mb=1e6)
    assert learner.plan_execution(a_batch(tasks=4)) in ("loop", "vmap")
    steps = 1 + TIMED_TRIAL_STEPS
    assert events == [
        ("loop", 1), "give back", *[("loop", 4)] * steps, "give back", *[("vmap", 4)] * steps, "give back",
    ]  # fmt: skip


@pytest.mark.parametrize("retaining", [False, True])
def test_trial_memory_goes_back_to_the_kernel_on_cpu_only_while_it_is_retained(monkeypatch, retaining):
    """``malloc_trim`` is called only while freed memory is being retained; otherwise glibc trims
    by itself and malloc is left alone."""
    trims = []
    monkeypatch.setattr(glibc_malloc, "_retaining", retaining)
    monkeypatch.setattr(glibc_malloc, "return_free_pages", lambda: trims.append("trim"))
    _release_trial_memory(torch.device("cpu"))
    assert trims == (["trim"] if retaining else [])


def test_auto_execution_counts_the_steps_the_trainer_still_plans():
    """Whether compiling pays depends on the training still planned: none outside a Trainer,
    and during fit the Trainer's planned steps less those taken."""
    learner = MAML(small_net(), inner_lr=0.3, execution="loop")
    assert learner._remaining_training_steps() == 0  # no Trainer: the run length is unknown
    remaining = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            remaining.append(module._remaining_training_steps())

    trainer(max_steps=6, limit_val_batches=0, callbacks=[Record()]).fit(learner, datamodule(train_episodes=4 * 10))
    assert remaining == [6, 5, 4, 3, 2, 1]


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    batch = a_batch(torch.float64, tasks=1)
    learner = MAML(small_net(dtype=torch.float64), inner_lr=0.3, inner_steps=1, first_order=True)
    ep = batch[0]
    adapted = learner.adapt(ep.support_x, ep.support_y, steps=1)
    leaves = {n: p.detach().requires_grad_() for n, p in adapted.params.items()}
    query_loss = F.cross_entropy(
        functional_forward(learner.backbone, leaves, task_buffers(learner.backbone), ep.query_x), ep.query_y
    )
    expected = torch.autograd.grad(query_loss, list(leaves.values()))
    learner.meta_loss(batch).backward()
    for p, g in zip(learner.backbone.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


def test_adaptation_leaves_weights_and_batchnorm_statistics_alone():
    learner = MAML(small_net(), inner_lr=0.5, inner_steps=3)
    before = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    batch = a_batch()
    learner.meta_loss(batch)
    model = learner.adapt(batch[0].support_x, batch[0].support_y)
    model(batch[0].query_x)
    for k, v in learner.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(model.params[n], p) for n, p in learner.backbone.named_parameters())


def test_anil_adapts_only_the_head_and_meta_sgd_learns_a_rate_per_weight():
    batch = a_batch()
    anil = ANIL(small_net())
    model = anil.adapt(batch[0].support_x, batch[0].support_y)
    for name, p in anil.backbone.named_parameters():
        assert torch.equal(model.params[name], p) is (not name.startswith("5.")), name

    meta_sgd = MetaSGD(small_net(), inner_lr=0.1)
    meta_sgd.meta_loss(batch).backward()
    for rate, (name, p) in zip(meta_sgd.inner_lrs, meta_sgd.backbone.named_parameters(), strict=True):
        assert rate.shape == p.shape and rate.grad is not None and rate.grad.abs().sum() > 0, name


def test_maml_plus_plus_options():
    batch = a_batch()
    learner = MAML(small_net(), inner_steps=3, learn_inner_lr=True, multi_step_loss_steps=100, first_order_steps=10)
    assert len(learner.inner_lrs) == 3 and learner.training_first_order
    learner.meta_loss(batch).backward()
    assert all(rate.grad is not None and rate.grad.abs().sum() > 0 for rate in learner.inner_lrs)
    torch.testing.assert_close(learner.multi_step_weights(3), torch.full((3,), 1 / 3))


def multi_step_reference(learner: MAML, batch: EpisodeBatch, weights: torch.Tensor) -> list[torch.Tensor]:
    """MAML++'s multi-step loss written out: per task, the weighted query losses after every SGD step."""
    net = learner.backbone
    params = adaptable_parameters(net)
    buffers = task_buffers(net)
    rate = learner.hparams.inner_lr
    losses = []
    for ep in batch:
        p, task = params, []
        for _ in range(learner.hparams.inner_steps):
            loss = F.cross_entropy(functional_forward(net, p, buffers, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(loss, list(p.values()), create_graph=True)
            p = {n: w - rate * g for (n, w), g in zip(p.items(), grads, strict=True)}
            task.append(F.cross_entropy(functional_forward(net, p, buffers, ep.query_x), ep.query_y))
        losses.append((torch.stack(task) * weights).sum())
    return list(torch.autograd.grad(torch.stack(losses).mean(), list(params.values())))


@pytest.mark.parametrize("global_step", [0, 60])
def test_the_multi_step_loss_gives_the_reference_meta_gradient_while_it_anneals(global_step, monkeypatch):
    monkeypatch.setattr(MAML, "global_step", property(lambda self: global_step))
    batch = a_batch(torch.float64)
    learner = MAML(small_net(dtype=torch.float64), inner_lr=0.3, inner_steps=3, multi_step_loss_steps=100)
    weights = learner.multi_step_weights(3)
    torch.testing.assert_close(
        weights, torch.tensor([1 / 3, 1 / 3, 1 / 3]) * (1 - global_step / 100) + torch.tensor([0, 0, global_step / 100])
    )
    expected = multi_step_reference(learner, batch, weights.double())
    learner.meta_loss(batch).backward()
    for p, g in zip(learner.backbone.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


def peak_saved_bytes(fn) -> int:
    """The most bytes of tensors saved for backward alive at once while ``fn()`` runs (and until its result goes)."""
    live, peak = [0], [0]

    class Saved:
        def __init__(self, tensor: torch.Tensor) -> None:
            self.tensor, self.nbytes = tensor, tensor.numel() * tensor.element_size()
            live[0] += self.nbytes
            peak[0] = max(peak[0], live[0])

        def __del__(self) -> None:
            live[0] -= self.nbytes

    with torch.autograd.graph.saved_tensors_hooks(Saved, lambda saved: saved.tensor):
        fn()
    return peak[0]


def test_the_multi_step_loss_keeps_one_task_in_memory_at_a_time():
    """Each task's meta-gradient is taken before the next task runs. The multi-step loss once kept every
    task's graph until the Trainer's backward: 8 tasks of the Omniglot config held ~2.6 GB, and a run under
    jemalloc crept from there to an out-of-memory kill at 22 GB after ~600 steps."""
    batch = a_batch(tasks=4)
    learner = MAML(small_net(), inner_lr=0.3, inner_steps=3, multi_step_loss_steps=100)
    one = peak_saved_bytes(lambda: learner.meta_loss(collate_episodes([batch[0]])))
    four = peak_saved_bytes(lambda: learner.meta_loss(batch))
    assert one > 0 and four < 1.5 * one


def test_once_annealed_the_multi_step_loss_scores_the_query_set_once(monkeypatch):
    """From step ``multi_step_loss_steps`` on only the last step's query loss has weight: the plain
    meta-loss gives its value and gradient with one query pass per task, not one per inner step."""
    monkeypatch.setattr(MAML, "global_step", property(lambda self: 100))
    dm = datamodule(queries=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader())).to(torch.float64)
    learner = MAML(
        small_net(dtype=torch.float64), inner_lr=0.3, inner_steps=3, multi_step_loss_steps=100, execution="loop"
    )
    passes = []
    learner.backbone.register_forward_pre_hook(lambda module, args: passes.append(args[0].shape[0]))
    assert not learner.multi_step_loss_active
    learner.meta_loss(batch).backward()
    assert passes.count(batch.query_x.shape[1]) == len(batch)  # 9 query rows; the support passes have 6
    assert passes.count(batch.support_x.shape[1]) == 3 * len(batch)
    expected = multi_step_reference(learner, batch, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    for p, g in zip(learner.backbone.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


def test_reptile_update_equals_its_closed_form_on_a_quadratic():
    """Loss_i(theta) = mean((theta - c_i)^2): SGD from theta gives phi_i = c_i + (1 - 2a/d)^k (theta - c_i)."""
    d, k, alpha, epsilon = 3, 4, 0.2, 0.5

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.theta.expand(x.shape[0], d)

    centres = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.0]], dtype=torch.float64)
    batch = EpisodeBatch(
        support_x=torch.zeros(2, 2, 1, dtype=torch.float64), support_y=centres[:, None].expand(2, 2, d),
        query_x=torch.zeros(2, 1, 1, dtype=torch.float64), query_y=centres[:, None].expand(2, 1, d),
        classes=torch.zeros(2, 0, dtype=torch.long),
    )  # fmt: skip
    for mode in ("batched", "serial"):
        learner = Reptile(Constant(), inner_lr=alpha, inner_steps=k, mode=mode, meta_lr=epsilon)
        theta = learner.backbone.theta.detach().clone()
        learner.meta_loss(batch).backward()
        torch.optim.SGD(learner.parameters(), lr=epsilon).step()
        shrink = (1 - 2 * alpha / d) ** k
        if mode == "batched":
            phis = centres + shrink * (theta - centres)
            expected = theta + epsilon * (phis.mean(0) - theta)
        else:
            expected = theta
            for c in centres:
                expected = expected + epsilon * (c + shrink * (expected - c) - expected)
        torch.testing.assert_close(learner.backbone.theta.detach(), expected)


def test_reptile_with_the_papers_inner_adam_moves_towards_what_torch_adam_reaches():
    """inner_optimizer="adam" (Nichol et al., 2018: Adam with beta1=0 in the inner loop): each task
    starts from theta with fresh moments; the outer SGD step with rate 1 lands on the mean of the phis."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    batch = a_batch(torch.float64)
    learner = Reptile(net, inner_lr=0.01, inner_steps=3, inner_optimizer="adam", meta_lr=1.0)
    theta = [p.detach().clone() for p in net.parameters()]
    phis = []
    for episode in batch:
        copy = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
        copy.load_state_dict(net.state_dict())
        adam = torch.optim.Adam(copy.parameters(), lr=0.01, betas=(0.0, 0.999))
        x, y = torch.cat([episode.support_x, episode.query_x]), torch.cat([episode.support_y, episode.query_y])
        for _ in range(3):
            adam.zero_grad()
            F.cross_entropy(copy(x), y).backward()
            adam.step()
        phis.append([p.detach() for p in copy.parameters()])
    learner.meta_loss(batch).backward()
    for i, p in enumerate(net.parameters()):
        expected = theta[i] - torch.stack([phi[i] for phi in phis]).mean(0)
        torch.testing.assert_close(p.grad, expected, rtol=1e-6, atol=1e-9)
    assert "first_order" not in learner.hparams and "execution" not in learner.hparams


def test_reptile_inner_minibatches_are_class_balanced_windows_that_wrap_round():
    y = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 0])  # class 0 four times, 1 and 2 three times
    rows = inner_minibatches(y, 4, 4)
    assert [y[r].tolist() for r in rows] == [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 0, 1], [2, 0, 1, 2]]
    assert rows[0].tolist() == [1, 2, 0, 3]  # within a class, the episode's own order
    assert sorted(torch.cat([*rows[:2], rows[2][:2]]).tolist()) == list(range(10))  # one pass before wrapping
    assert inner_minibatches(y, None, 3) == [slice(None)] * 3
    assert [r.tolist() for r in inner_minibatches(torch.randn(5, 1), 2, 3)] == [[0, 1], [2, 3], [4, 0]]
    with pytest.raises(ValueError, match="inner_batch_size=11 exceeds the 10 examples"):
        inner_minibatches(y, 11, 1)
    with pytest.raises(ValueError, match="inner_batch_size must be a positive"):
        Reptile(small_net(), inner_batch_size=0)


def test_reptile_with_inner_minibatches_moves_towards_sgd_on_those_minibatches():
    """inner_batch_size (Nichol et al., 2018, Table 3: minibatches of 10): step k fits the k-th window."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    batch = a_batch(torch.float64)  # 3 ways, 2 + 2 per class: 12 examples per episode
    learner = Reptile(net, inner_lr=0.1, inner_steps=4, inner_batch_size=5, meta_lr=1.0)
    theta = [p.detach().clone() for p in net.parameters()]
    phis = []
    for episode in batch:
        copy = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
        copy.load_state_dict(net.state_dict())
        sgd = torch.optim.SGD(copy.parameters(), lr=0.1)
        x, y = torch.cat([episode.support_x, episode.query_x]), torch.cat([episode.support_y, episode.query_y])
        by_class = [[i for i in range(12) if y[i] == c] for c in range(3)]
        order = [by_class[c][r] for r in range(4) for c in range(3)]  # first of each class, then second, ...
        for k in range(4):
            rows = [order[(5 * k + j) % 12] for j in range(5)]
            sgd.zero_grad()
            F.cross_entropy(copy(x[rows]), y[rows]).backward()
            sgd.step()
        phis.append([p.detach() for p in copy.parameters()])
    learner.meta_loss(batch).backward()
    for i, p in enumerate(net.parameters()):
        torch.testing.assert_close(p.grad, theta[i] - torch.stack([phi[i] for phi in phis]).mean(0))
    assert learner.hparams.inner_batch_size == 5


def test_reptile_carrying_the_inner_adam_state_is_the_authors_one_adam_across_tasks():
    """carry_inner_state (supervised-reptile keeps one Adam, resetting only the weights after each task):
    two meta-steps equal one torch Adam run through the tasks in order; evaluation starts from its state
    and leaves the carried state as it was; a checkpoint keeps it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    learner = Reptile(net, inner_lr=0.01, inner_steps=2, inner_optimizer="adam", carry_inner_state=True, meta_lr=0.5)
    copy = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
    copy.load_state_dict(net.state_dict())
    adam = torch.optim.Adam(copy.parameters(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    for _ in range(2):  # two meta-steps
        batch = a_batch(torch.float64)
        theta = {k: v.clone() for k, v in copy.state_dict().items()}
        phis = []
        for episode in batch:
            copy.load_state_dict(theta)  # the weights, not Adam's moments, go back
            x, y = torch.cat([episode.support_x, episode.query_x]), torch.cat([episode.support_y, episode.query_y])
            for _ in range(2):
                adam.zero_grad()
                F.cross_entropy(copy(x), y).backward()
                adam.step()
            phis.append({k: v.clone() for k, v in copy.state_dict().items()})
        copy.load_state_dict(
            {k: theta[k] + 0.5 * (torch.stack([p[k] for p in phis]).mean(0) - theta[k]) for k in theta}
        )
        learner.zero_grad()
        learner.meta_loss(batch).backward()
        torch.optim.SGD(learner.parameters(), lr=0.5).step()
        for ours, theirs in zip(net.parameters(), copy.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    carried = learner.carried_inner_state
    assert carried.count == 2 * 2 * len(batch)
    for (name, nu), p in zip(carried.nu.items(), copy.parameters(), strict=True):
        torch.testing.assert_close(nu, adam.state[p]["exp_avg_sq"], rtol=1e-6, atol=1e-12, msg=name)

    episode = batch[0]
    adapted = learner.adapt(episode.support_x, episode.support_y, steps=3)
    for _ in range(3):  # the evaluation task goes on from the training Adam's state
        adam.zero_grad()
        F.cross_entropy(copy(episode.support_x), episode.support_y).backward()
        adam.step()
    for ours, theirs in zip(adapted.params.values(), copy.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    assert learner.carried_inner_state is carried  # evaluation left it as it was

    checkpoint: dict = {}
    learner.on_save_checkpoint(checkpoint)
    restored = Reptile(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double(), inner_optimizer="adam",
                       carry_inner_state=True)  # fmt: skip
    restored.on_load_checkpoint(checkpoint)
    assert restored.carried_inner_state.count == carried.count
    for name in carried.nu:
        assert torch.equal(restored.carried_inner_state.nu[name], carried.nu[name])
    with pytest.raises(ValueError, match="needs inner_optimizer='adam'"):
        Reptile(small_net(), carry_inner_state=True)


def test_maml_options_that_do_not_fit_together_fail_at_construction():
    with pytest.raises(ValueError, match="defined for SGD"):
        MAML(small_net(), inner_optimizer="adam", learn_inner_lr=True)
    with pytest.raises(ValueError, match="takes no inner_optimizer"):
        MetaSGD(small_net(), inner_optimizer="adam")
    with pytest.raises(ValueError, match="inner_optimizer='rmsprop'"):
        MAML(small_net(), inner_optimizer="rmsprop")


def test_maml_adam_inner_loop_matches_on_every_execution_path():
    batch = a_batch(torch.float64)
    grads = {}
    for execution in ("loop", "vmap"):
        learner = MAML(small_net(dtype=torch.float64), inner_lr=0.01, inner_steps=2, inner_optimizer="adam",
                       execution=execution)  # fmt: skip
        learner.meta_loss(batch).backward()
        grads[execution] = [p.grad for p in learner.parameters()]
    for a, b in zip(grads["loop"], grads["vmap"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_old_names_still_work_for_one_release_with_a_warning():
    with pytest.warns(DeprecationWarning, match="inner_params"):
        learner = MAML(small_net(), adapt="head")
    assert learner.inner_param_names == ["5.weight", "5.bias"]
    assert learner.hparams.inner_params == "head" and "adapt" not in learner.hparams
    with pytest.warns(DeprecationWarning, match="evaluation_needs_autograd"):

        class OldStyle(ProtoNet):
            adapts_with_gradients = True

    assert OldStyle.evaluation_needs_autograd and OldStyle.class_scores == "backbone_head"


@pytest.mark.parametrize("learner_cls", [MAML, ANIL, MetaSGD, Reptile])
def test_fit_test_predict_under_a_default_trainer(learner_cls):
    dm = datamodule()
    learner = learner_cls(small_net(), inner_steps=1)
    t = trainer(max_epochs=1)
    t.fit(learner, dm)
    (scores,) = t.test(learner, dm)
    assert set(scores) == {"test/loss", "test/loss_ci95", "test/acc", "test/acc_ci95", "test/episodes"}
    assert scores["test/episodes"] == dm.num_episodes["test"]
    assert 0 <= scores["test/acc"] <= 1 and scores["test/acc_ci95"] >= 0
    predictions = t.predict(learner, dm)
    assert predictions[0].labels.shape == (4, 6) and predictions[0].labels.max() < 3


@pytest.mark.parametrize("execution", ["auto", "compiled"])
def test_bf16_mixed_precision_on_cpu(execution):
    learner = MAML(small_net(), inner_lr=0.3, execution=execution)
    trainer(fast_dev_run=2, precision="bf16-mixed").fit(learner, datamodule())
    assert all(torch.isfinite(p).all() for p in learner.parameters())


def test_checkpoint_restores_without_user_code(tmp_path):
    dm = datamodule()
    learner = MetaSGD(small_net(), inner_lr=0.2, inner_steps=2)
    t = trainer(max_steps=2, limit_val_batches=0)
    t.fit(learner, dm)
    t.save_checkpoint(tmp_path / "last.ckpt")
    restored = MetaSGD.load_from_checkpoint(tmp_path / "last.ckpt")
    assert restored.hparams.inner_steps == 2 and restored.hparams.inner_lr == 0.2
    ep = a_batch()[0]
    torch.testing.assert_close(
        restored.adapt(ep.support_x, ep.support_y)(ep.query_x), learner.adapt(ep.support_x, ep.support_y)(ep.query_x)
    )


@pytest.mark.parametrize("run", ["fit", "validate"])
def test_head_size_must_match_ways_before_any_step(run):
    model = MAML(small_net(ways=4))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(EpisodeConfigError, match=r"has 4 outputs but the (train|val) episodes are 3-way"):
        getattr(trainer(fast_dev_run=1), run)(model, datamodule())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class RecordingMAML(MAML):
    def __init__(self, path: str = "", **kwargs) -> None:
        super().__init__(small_net(), **kwargs)
        self.path = path

    def on_train_end(self) -> None:
        if self.global_rank == 0:
            torch.save([p.detach() for p in self.parameters()], self.path)


def test_ddp_meta_gradient_equals_single_process(tmp_path):
    """Two CPU ranks with 2 tasks each take the same SGD step as one process with the 4 tasks."""
    settings = dict(inner_lr=0.3, meta_lr=1.0, meta_optimizer="sgd")
    single = RecordingMAML(str(tmp_path / "single.pt"), **settings)
    trainer(max_steps=1, limit_val_batches=0).fit(single, datamodule(meta_batch_size=4, train_episodes=4))
    ddp = RecordingMAML(str(tmp_path / "ddp.pt"), **settings)
    trainer(max_steps=1, limit_val_batches=0, **two_spawned_cpu_processes()).fit(
        ddp, datamodule(meta_batch_size=2, train_episodes=4)
    )
    initial = [p.detach() for p in small_net().parameters()]
    after_single, after_ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    for p0, a, b in zip(initial, after_single, after_ddp, strict=True):
        assert not torch.equal(p0, a)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_maml_meta_trained_briefly_on_glyphs_beats_chance_by_a_wide_margin():
    """80 second-order steps of 8 tasks (about 30 s on 2 idle cores); chance is 20%."""
    from lit_meta.backbones import Conv4

    L.seed_everything(0, verbose=False)
    dm = EpisodicDataModule(
        "glyphs", ways=5, shots=1, queries=5, eval_queries=15, meta_batch_size=8,
        train_episodes=8 * 80, test_episodes=100,
    )  # fmt: skip
    learner = MAML(Conv4(1, 5, hidden_channels=32), inner_lr=0.4, eval_inner_steps=3, meta_lr=3e-3, execution="loop")
    t = trainer(max_epochs=1, limit_val_batches=0)
    t.fit(learner, dm)
    (scores,) = t.test(learner, dm, verbose=False)
    assert scores["test/acc"] - scores["test/acc_ci95"] > 0.45, scores
