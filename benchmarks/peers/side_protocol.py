"""The run every side of ``benchmarks/side_by_side.py`` makes: the same loop around each library's own code.

A side (lit-meta's process, or a peer's in its own environment) gives its loss of a
training batch, its optimizer and its evaluation of validation episodes; :func:`run_side`
checks that its network computes what lit-meta's computed on the same input (same weights
mapped right), trains on the shared stream's training batches in order, saves the
gradients of the first batch, evaluates the fixed validation episodes every
``eval_every`` steps (and at the start and end), and writes ``<name>.json`` into the
work folder. Torch, NumPy and the standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the episode stream
from networks import gradients, outputs_in_eval_mode

from episode_stream import EpisodeStream, accuracy_with_ci
from results_log import versions

Batch = dict[str, torch.Tensor]
EVAL_CHUNK = 20  # validation episodes per evaluate() call


def arguments() -> argparse.Namespace:
    """The options every side takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--learner", required=True)
    parser.add_argument("--name", required=True, help="the side's name, naming its files in the work folder")
    for name in ("--steps", "--eval-every", "--meta-batch", "--eval-inner-steps"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--inner-lr", type=float, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return args


def tensors(episodes: dict[str, np.ndarray]) -> Batch:
    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in episodes.items()}


def run_side(
    args: argparse.Namespace,
    loss_of: Callable[[Batch], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    correct_of: Callable[[Batch], torch.Tensor],
    shared: list[nn.Module],
    backbone: nn.Module,
    aligned_loss_of: Callable[[Batch], torch.Tensor] | None = None,
) -> None:
    """Trains and evaluates one side; ``correct_of`` gives ``[episodes]`` query accuracies in ``[0, 1]``.

    ``aligned_loss_of``, a diagnostic: the side's loss with what differs from lit-meta by design
    undone; its gradients on the first batch go to ``<name>-aligned-grads.pt`` (the BatchNorm
    running statistics it moved are put back, so training is as without it).
    """
    workdir = args.workdir
    stream = EpisodeStream(workdir / "stream")
    check = torch.load(workdir / "check.pt")
    same_function = float((outputs_in_eval_mode(backbone, check["x"]) - check["out"]).abs().max())
    if same_function > 1e-4:
        raise RuntimeError(f"{args.name}: the network is not lit-meta's function (max |diff| {same_function:.2e})")

    def evaluate() -> tuple[float, float]:
        count = stream.count("val")
        correct = [correct_of(tensors(stream.episodes("val", s, EVAL_CHUNK))) for s in range(0, count, EVAL_CHUNK)]
        return accuracy_with_ci(torch.cat(correct).double().numpy())

    series, first_loss, start = [], None, time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            series.append([step, *evaluate()])
            print(f"{args.name} step {step}: {series[-1][1]:.2f} ± {series[-1][2]:.2f}", file=sys.stderr, flush=True)
        if step == args.steps:
            break
        batch = tensors(stream.episodes("train", step * args.meta_batch, args.meta_batch))
        if step == 0 and aligned_loss_of is not None:
            buffers = [b.clone() for m in shared for b in m.buffers()]
            optimizer.zero_grad()
            aligned_loss_of(batch).backward()
            torch.save(gradients(shared), workdir / f"{args.name}-aligned-grads.pt")
            with torch.no_grad():
                for b, saved in zip((b for m in shared for b in m.buffers()), buffers, strict=True):
                    b.copy_(saved)
        optimizer.zero_grad()
        loss = loss_of(batch)
        loss.backward()
        if step == 0:
            first_loss = float(loss.detach())
            torch.save(gradients(shared), workdir / f"{args.name}-grads.pt")
        optimizer.step()
    seconds = time.perf_counter() - start
    result = {"series": series, "seconds": seconds, "first_loss": first_loss, "same_function_max_abs": same_function}
    result["versions"] = versions()
    (workdir / f"{args.name}.json").write_text(json.dumps(result))
