"""A metric learner's checkpoint tested on the same episodes with BatchNorm's running and batch statistics.

lit-meta's metric learners evaluate with BatchNorm on its running statistics (``eval()``), as Snell
et al.'s Prototypical Networks code does. Several reference implementations instead leave BatchNorm
in training mode at test time, so that each test episode is normalised with its own statistics
(support and query together: transductive), as in training. The papers rarely say which they did
(Vinyals et al., 2016, do not). This script measures what the choice is worth for one checkpoint:

* ``running``: lit-meta's test (:meth:`~lit_meta.learners.MetaLearner.evaluate_outputs`), which
  must reproduce the ``test/acc`` the run logged;
* ``episode``: the learner's training forward (support and query embedded in one call) with every
  BatchNorm layer using the batch statistics of that call, episode by episode, on the same episodes;
* ``separate``: the support set and the query set embedded in two calls, each normalised with its own
  batch statistics (the learner's ``adapt``, then its task model on the queries), as the Relation
  Network authors' code does at test (Sung et al., 2018, floodsung/LearningToCompare_FSL: BatchNorm
  never in ``eval()``, support and query through the encoder separately).

    python benchmarks/batch_norm_statistics.py --config configs/matching_net/omniglot_5w1s.yaml \\
        --checkpoint RUN/checkpoints/epoch=...ckpt --data ../shared/data

It prints the three accuracies and the paired difference of each batch-statistics variant from
``running`` (mean ± 95% CI over the episodes), for a note in ``benchmarks/notes/``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn.modules.batchnorm import _BatchNorm

if TYPE_CHECKING:
    from lit_meta.data.episode import EpisodeBatch

REPO = Path(__file__).resolve().parents[1]


def with_batch_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose BatchNorm layers normalise with the statistics of each call, even in ``eval()``."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
    return copied


@torch.no_grad()
def episode_scores(model: torch.nn.Module, batches: Iterable[EpisodeBatch]) -> dict[str, list[float]]:
    """Each episode's query accuracy with BatchNorm's ``running`` statistics and the two batch-statistics variants.

    ``model`` is a metric learner; it is put in ``eval()``. The keys are the variants of this module's
    docstring; every list holds one accuracy per episode, in the order of ``batches``.
    """
    model.eval()
    batch_model = with_batch_statistics(model)
    scores: dict[str, list[float]] = {"running": [], "episode": [], "separate": []}
    for batch in batches:
        running = model.evaluate_outputs(batch)
        for episode, outputs in zip(batch, running, strict=True):
            episode_wise = batch_model(episode.support_x, episode.support_y, episode.query_x)
            separate = batch_model.adapt(episode.support_x, episode.support_y)(episode.query_x)
            for name, logits in (("running", outputs), ("episode", episode_wise), ("separate", separate)):
                scores[name].append((logits.argmax(-1) == episode.query_y).float().mean().item())
    return scores


def mean_ci95(scores: list[float]) -> dict[str, float]:
    """Mean and 95% confidence half-width, in %, of per-episode accuracies."""
    values = torch.tensor(scores, dtype=torch.float64)
    half_width = 1.96 * values.std().item() / len(values) ** 0.5
    return {"acc": round(100 * values.mean().item(), 2), "ci95": round(100 * half_width, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--threads", type=int, help="intra-op threads; default: torch's")
    parser.add_argument("cli", nargs="*", help="further lit-meta arguments (e.g. --data.test_episodes 100)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command:", shlex.join([sys.executable, *sys.argv]))

    import yaml

    from lit_meta.cli import MetaLearningCLI

    data = yaml.safe_load(args.config.read_text())["data"]
    kwargs = {**(data.get("dataset_kwargs") or {}), "cache_dir": str(args.cache)}
    sys.argv = sys.argv[:1]  # LightningCLI reads these arguments only, not this script's
    cli = MetaLearningCLI(
        args=["--config", str(args.config), "--data.root", str(args.data), "--data.dataset_kwargs", json.dumps(kwargs),
              "--trainer.logger", "false", *args.cli],
        run=False,
    )  # fmt: skip
    model, datamodule = cli.model, cli.datamodule
    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    datamodule.setup("test")
    start = time.perf_counter()
    scores = episode_scores(model, datamodule.test_dataloader())
    figures = {
        "config": str(args.config.relative_to(REPO) if args.config.is_absolute() else args.config),
        "checkpoint_step": checkpoint.get("global_step"),
        "episodes": len(scores["running"]),
        **{name: mean_ci95(values) for name, values in scores.items()},
        # paired over the episodes: both scores of an episode come from the same support and query sets
        **{
            f"{name} - running": mean_ci95([b - r for b, r in zip(scores[name], scores["running"], strict=True)])
            for name in ("episode", "separate")
        },
    }
    print(json.dumps(figures, indent=1), f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
