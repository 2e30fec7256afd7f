"""Reproduce MAML's sinusoid regression (Finn et al., 2017, Section 5.1, Figures 2-3).

Setup of the paper: tasks y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5];
K = 10 support points; MLP 1-40-40-1 with ReLU; one inner step with alpha = 0.01;
meta-batch 25; Adam with meta learning rate 1e-3. The baseline is the same network
"pretrained" on all tasks (one regression loss over the tasks of each batch), then
fine-tuned on the K points with SGD like MAML at test time.

Reports the test MSE on 600 held-out tasks after 0, 1 and 10 gradient steps (mean and 95%
CI) and the iterations and CPU time, and records them, with the fits of one held-out task
after 0, 1 and 10 steps (the paper's Figure 2), as a ``sinusoid`` line in
``benchmarks/results/sinusoid.jsonl``; ``python benchmarks/report.py`` draws the figure.

    python benchmarks/sinusoid_maml.py --iterations 20000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lit_meta.backbones import SinusoidMLP
from lit_meta.data import EpisodeBatch, EpisodeDataset, EpisodicDataModule, collate_episodes
from lit_meta.data.datasets import SinusoidTasks
from lit_meta.functional import adapt, adaptable_parameters, functional_forward, task_buffers
from lit_meta.learners import MAML
from lit_meta.metrics import Z_95
from results_log import record_result


def fine_tuned(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, torch.Tensor]:
    """The network's parameters after ``steps`` SGD steps (rate 0.01, as in the paper) on ``(x, y)``."""
    params = {n: p.detach() for n, p in adaptable_parameters(net).items()}
    if steps == 0:
        return params
    buffers = task_buffers(net)
    return adapt(
        lambda p: F.mse_loss(functional_forward(net, p, buffers, x), y), params, steps=steps, step_size=0.01
    ).params


def fine_tune_mse(net: torch.nn.Module, batch: EpisodeBatch, steps: int) -> np.ndarray:
    """Per-task query MSE after ``steps`` SGD steps on the support set."""
    errors = []
    for ep in batch:
        params = fine_tuned(net, ep.support_x, ep.support_y, steps)
        with torch.no_grad():
            errors.append(F.mse_loss(functional_forward(net, params, task_buffers(net), ep.query_x), ep.query_y).item())
    return np.array(errors)


def pretrain_baseline(iterations: int, seed: int) -> torch.nn.Module:
    """The paper's baseline: regress on the tasks of each meta-batch jointly (no adaptation)."""
    torch.manual_seed(seed)
    net = SinusoidMLP()
    dm = EpisodicDataModule(
        "sinusoid", shots=10, queries=10, meta_batch_size=25, train_episodes=25 * iterations, seed=seed
    )
    dm.setup("fit")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for batch in dm.train_dataloader():
        x = torch.cat([batch.support_x, batch.query_x], 1)
        y = torch.cat([batch.support_y, batch.query_y], 1)
        loss = F.mse_loss(net(x.flatten(0, 1)), y.flatten(0, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def mean_ci(errors: np.ndarray) -> tuple[float, float]:
    return float(errors.mean()), float(Z_95 * errors.std(ddof=1) / np.sqrt(len(errors)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000, help="meta-training iterations (paper: 70,000)")
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="where to record (default benchmarks/results)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads")

    L.seed_everything(args.seed, verbose=False)
    dm = EpisodicDataModule(
        "sinusoid", shots=10, queries=10, meta_batch_size=25,
        train_episodes=25 * args.iterations, test_episodes=args.test_tasks, seed=args.seed,
    )  # fmt: skip
    maml = MAML(SinusoidMLP(), inner_lr=0.01, inner_steps=1, meta_lr=1e-3)
    trainer = L.Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start_cpu, start = time.process_time(), time.perf_counter()
    trainer.fit(maml, dm)
    maml_cpu, maml_wall = time.process_time() - start_cpu, time.perf_counter() - start
    print(f"MAML: {args.iterations} iterations, {maml_wall:.0f} s wall, {maml_cpu:.0f} s CPU")

    start_cpu, start = time.process_time(), time.perf_counter()
    baseline = pretrain_baseline(args.iterations, args.seed)
    print(f"pretrained baseline: {args.iterations} iterations, {time.perf_counter() - start:.0f} s wall, "
          f"{time.process_time() - start_cpu:.0f} s CPU")  # fmt: skip

    dm.setup("test")
    test_batch = collate_episodes([EpisodeDataset(dm.splits["test"])[plan] for plan in dm.samplers["test"]])
    models = {"MAML": maml.backbone, "pretrained on all tasks": baseline}
    mse = {name: {str(steps): mean_ci(fine_tune_mse(net, test_batch, steps)) for steps in (0, 1, 10)}
           for name, net in models.items()}  # fmt: skip
    print(f"\ntest MSE over {args.test_tasks} tasks, K=10, SGD step 0.01 (mean ± 95% CI)")
    print("| model | 0 steps | 1 step | 10 steps |\n| --- | --- | --- | --- |")
    for name, by_steps in mse.items():
        print(f"| {name} | " + " | ".join(f"{m:.3f} ± {ci:.3f}" for m, ci in by_steps.values()) + " |")

    figures = {"k_shot": 10, "test_tasks": args.test_tasks, "inner_steps_train": 1, "alpha": 0.01, "meta_batch": 25,
               "iterations": args.iterations, "mse": mse, "fits": fits(models, args.seed),
               "maml_wall_s": round(maml_wall), "maml_cpu_s": round(maml_cpu)}  # fmt: skip
    record_result("sinusoid", "sinusoid", figures, budget={"iterations": args.iterations}, results_dir=args.results)
    print("\nrecorded in sinusoid.jsonl; python benchmarks/report.py draws the figure")


def fits(models: dict[str, torch.nn.Module], seed: int) -> dict[str, object]:
    """The paper's Figure 2: one held-out task, its K=10 points, each model's fit after 0, 1 and 10 steps."""
    tasks = SinusoidTasks()
    rng = np.random.default_rng(seed + 1234)
    task = tasks.sample_task(rng)
    support_x = torch.from_numpy(tasks.sample_inputs(rng, 10)).float()
    support_y = torch.from_numpy(tasks.evaluate(task, support_x.double().numpy())).float()
    grid = torch.linspace(-5, 5, 200)[:, None]
    curves: dict[str, dict[str, list[float]]] = {}
    for name, net in models.items():
        curves[name] = {}
        for steps in (0, 1, 10):
            adapted = fine_tuned(net, support_x, support_y, steps)
            with torch.no_grad():
                curves[name][str(steps)] = functional_forward(net, adapted, task_buffers(net), grid).flatten().tolist()
    return {
        "x": grid.flatten().tolist(),
        "target": tasks.evaluate(task, grid.double().numpy()).flatten().tolist(),
        "support_x": support_x.flatten().tolist(),
        "support_y": support_y.flatten().tolist(),
        "models": curves,
    }


if __name__ == "__main__":
    main()
