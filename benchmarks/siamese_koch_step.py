"""Time one meta-training step of the faithful Siamese config (Koch et al., 2015) on a CPU.

The config ``configs/siamese/omniglot_koch_20w1s.yaml`` (``KochSiameseNet`` on 105x105 images,
``AffineDistortion``, SGD, 20-way episodes of one support and one query drawing per class) is
built by the ``lit-meta`` command line's own parser, on the procedural glyphs at 105x105 in
place of Omniglot (the same shapes; the pixels do not change the cost). Two figures per step,
medians over ``--steps`` steps after ``--warmup``: loading an episode (its 40 images distorted,
as the DataLoader does) and the learner's step
(``loss = learner.meta_loss(batch); opt.zero_grad(); loss.backward(); opt.step()``); then the
faster of two classifications of a test episode of the config (``learner.adapt``,
no gradients), what each validation and test episode costs. The result
goes to ``benchmarks/results/siamese_koch_step.jsonl`` (``results_log.record_result``).

    OMP_NUM_THREADS=1 python benchmarks/siamese_koch_step.py --threads 1 --steps 5 --warmup 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lit_meta.cli import MetaLearningCLI
from results_log import record_result

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "siamese" / "omniglot_koch_20w1s.yaml"


def shape(episode) -> dict[str, int]:
    """An episode's ways, shots, queries per class and image side."""
    ways = episode.ways
    return {
        "ways": ways,
        "shots": episode.support_x.shape[0] // ways,
        "queries": episode.query_x.shape[0] // ways,
        "image_size": episode.query_x.shape[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-record", action="store_true", help="print only; write no result line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        data = [
            "--data.dataset=glyphs",
            f"--data.root={root}",
            "--data.dataset_kwargs={num_classes: 250, image_size: 105}",
        ]
        cli = MetaLearningCLI(args=["--config", str(CONFIG), *data, "--trainer.logger=false"], run=False)
        learner, datamodule = cli.model, cli.datamodule
        datamodule.setup("fit")
        optimizer = learner.configure_optimizers()["optimizer"]
        batches = iter(datamodule.train_dataloader())
        load_times, step_times = [], []
        learner.train()
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            batch = next(batches)
            loaded = time.perf_counter()
            loss = learner.meta_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done = time.perf_counter()
            if step >= args.warmup:
                load_times.append(loaded - start)
                step_times.append(done - loaded)
        # one test episode (20-way 1-shot, 15 queries: 320 images), classified as evaluation does
        datamodule.setup("test")
        episode = next(iter(datamodule.test_dataloader()))[0]
        learner.eval()
        eval_times = []
        with torch.no_grad():
            for _ in range(2):
                start = time.perf_counter()
                learner.adapt(episode.support_x, episode.support_y)(episode.query_x)
                eval_times.append(time.perf_counter() - start)
    figures = {
        "config": str(CONFIG.relative_to(CONFIG.parents[2])),
        "episode": shape(batch[0]),
        "threads": args.threads,
        "load_s_median": round(statistics.median(load_times), 4),
        "step_s_median": round(statistics.median(step_times), 4),
        "step_s_all": [round(t, 4) for t in step_times],
        "eval_episode_s": round(min(eval_times), 4),
        "eval_episode": shape(episode),
    }
    print(figures)
    if not args.no_record:
        record_result("siamese_koch_step", "step_time", figures, budget={"steps": args.steps, "warmup": args.warmup})


if __name__ == "__main__":
    main()
