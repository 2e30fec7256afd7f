"""A 600-episode MAML evaluation against learn2learn's, on the same episodes and weights (issue 19, point 4).

Omniglot 5-way 1-shot test episodes of the published split (15 queries per class), one
MAML Conv4 (a lit-meta checkpoint's weights, or a seeded random initialisation), adapted
``--steps`` inner steps at ``inner_lr`` on each episode's support set; the query set is
labelled by the adapted network. Three configurations, each in a fresh process with
``--threads`` threads, in ``--rounds`` interleaved rounds:

* ``lit-meta loop``: ``MAML(eval_execution="loop").evaluate_outputs`` on meta-batches of
  ``--tasks`` episodes, as ``Trainer.test`` runs it: eager adaptation, one task after another;
* ``lit-meta compiled``: the same with ``eval_execution="compiled"``: each task's support
  gradients and query pass under ``torch.compile`` (what ``"auto"`` chooses for long runs);
* ``learn2learn``: ``MAML(net, lr).clone()``, ``adapt`` ``--steps`` times, label the query set,
  as learn2learn's Omniglot example evaluates (``benchmarks/peers/learn2learn_maml_evaluation.py``).

Every configuration first adapts to one episode untimed (the compiled one compiles
there; that time is reported apart), then is timed over all the episodes. The
accuracies (mean and 95% interval over episodes), the share of query predictions
equal to the eager loop's and each process's peak RSS (from its start: a child inherits
its parent's ``ru_maxrss``, so VmHWM is reset first) are printed, and the result is recorded in
``benchmarks/results/evaluation_speed.jsonl``.

    python benchmarks/maml_evaluation.py --checkpoint path/to/maml.ckpt \\
        --peer-python /work/peer/venv/bin/python-l2l --rounds 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peak_rss import peak_rss_since_reset_mb, reset_peak_rss  # noqa: E402
from results_log import record_result  # noqa: E402
from subprocess_runs import run_configuration  # noqa: E402

CONFIGS = ("lit-meta loop", "lit-meta compiled", "learn2learn")


def write_inputs(args: argparse.Namespace, workdir: Path) -> dict:
    """The test episodes and the network's weights (parameter order), shared by every configuration."""
    import torch

    from lit_meta import EpisodicDataModule
    from lit_meta.backbones import Conv4
    from lit_meta.learners import MAML

    dm = EpisodicDataModule(
        "omniglot", root=str(args.data), dataset_kwargs={"cache_dir": str(args.cache)}, ways=5, shots=1,
        queries=15, meta_batch_size=args.tasks, test_episodes=args.episodes, seed=args.seed,
    )  # fmt: skip
    dm.setup("test")
    batches = list(dm.test_dataloader())
    episodes = {
        field: torch.cat([getattr(b, field) for b in batches])
        for field in ("support_x", "support_y", "query_x", "query_y")
    }
    torch.save(episodes, workdir / "episodes.pt")
    if args.checkpoint:
        net = MAML.load_from_checkpoint(args.checkpoint, map_location="cpu").backbone
    else:
        torch.manual_seed(args.seed)
        net = Conv4(in_channels=1, out_features=5)
    torch.save([p.detach() for p in net.parameters()], workdir / "weights.pt")
    return {"episodes": len(episodes["support_x"]), "weights": str(args.checkpoint or f"Conv4, seed {args.seed}")}


def worker(config: str, workdir: Path, args: argparse.Namespace) -> None:
    """One lit-meta configuration: warm up on the first episode, then time every episode."""
    reset_peak_rss()  # a fresh process inherits its parent's peak RSS (ru_maxrss survives fork and exec)
    import torch

    from lit_meta.backbones import Conv4
    from lit_meta.data.episode import EpisodeBatch
    from lit_meta.learners import MAML

    torch.set_num_threads(args.threads)
    episodes = torch.load(workdir / "episodes.pt")
    count = len(episodes["support_x"])
    net = Conv4(in_channels=1, out_features=5)
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(workdir / "weights.pt"), strict=True):
            p.copy_(w)
    mode = "compiled" if config == "lit-meta compiled" else "loop"
    learner = MAML(net, inner_lr=args.inner_lr, eval_inner_steps=args.steps, eval_execution=mode)

    def batch(start: int, stop: int) -> EpisodeBatch:
        fields = {name: tensor[start:stop] for name, tensor in episodes.items()}
        return EpisodeBatch(**fields, classes=torch.zeros(stop - start, 5, dtype=torch.long))

    start = time.perf_counter()
    learner.evaluate_outputs(batch(0, 1))
    warm_up = time.perf_counter() - start
    predictions = []
    start = time.perf_counter()
    for first in range(0, count, args.tasks):
        predictions.append(learner.evaluate_outputs(batch(first, min(first + args.tasks, count))).argmax(-1))
    seconds = time.perf_counter() - start
    torch.save(torch.cat(predictions), workdir / f"predictions-{config.replace(' ', '_')}.pt")
    print(json.dumps({"seconds": seconds, "warm_up_s": warm_up, "peak_rss_mb": peak_rss_since_reset_mb()}))


def launch(config: str, args: argparse.Namespace, workdir: Path) -> dict | None:
    common = ["--steps", str(args.steps), "--inner-lr", str(args.inner_lr), "--threads", str(args.threads),
              "--tasks", str(args.tasks), "--workdir", str(workdir)]  # fmt: skip
    if config == "learn2learn":
        if not args.peer_python:
            return None
        command = [args.peer_python, str(HERE / "peers" / "learn2learn_maml_evaluation.py"), *common]
    else:
        command = [sys.executable, __file__, "--one", config, *common]
    return run_configuration(command, "default", config)


def accuracy(predictions, targets) -> tuple[float, float]:
    """Mean query accuracy over episodes, in %, and its 95% interval (1.96 standard errors)."""
    per_episode = (predictions == targets).float().mean(-1).mul(100).tolist()
    return statistics.fmean(per_episode), 1.96 * statistics.stdev(per_episode) / math.sqrt(len(per_episode))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a lit-meta MAML checkpoint (Conv4, 5-way)")
    parser.add_argument("--peer-python", default=None, help="the learn2learn environment's interpreter")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10, help="inner steps at evaluation")
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--tasks", type=int, default=32, help="episodes per evaluation batch (lit-meta)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LIT_META_OMNIGLOT", HERE.parents[1] / "shared/data"))
    )
    parser.add_argument("--cache", type=Path, default=Path("data/omniglot-cache"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        worker(args.one, args.workdir, args)
        return

    import platform

    import torch

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lit-meta-maml-eval-"))
    inputs = write_inputs(args, workdir)
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} threads per process")
    print(f"{inputs['episodes']} episodes, {args.steps} inner steps, weights: {inputs['weights']}")
    runs: dict[str, list[dict]] = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            result = launch(config, args, workdir)
            if result is not None:
                runs[config].append(result)
    targets = torch.load(workdir / "episodes.pt")["query_y"]
    reference = torch.load(workdir / "predictions-lit-meta_loop.pt")
    rows = {}
    print("\n| configuration | seconds (each round) | warm-up s | accuracy % | equal to the loop's | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config, results in runs.items():
        if not results:
            continue
        predictions = torch.load(workdir / f"predictions-{config.replace(' ', '_')}.pt")
        acc, ci = accuracy(predictions, targets)
        rows[config] = {
            "seconds": [r["seconds"] for r in results],
            "warm_up_s": [r["warm_up_s"] for r in results],
            "peak_rss_mb": [r["peak_rss_mb"] for r in results],
            "acc": acc,
            "ci95": ci,
            "equal_predictions": float((predictions == reference).float().mean()),
        }
        row = rows[config]
        print(
            f"| {config} | {', '.join(f'{s:.1f}' for s in row['seconds'])} | "
            f"{', '.join(f'{s:.1f}' for s in row['warm_up_s'])} | {acc:.2f} ± {ci:.2f} | "
            f"{row['equal_predictions']:.4%} | {', '.join(f'{m:.0f}' for m in row['peak_rss_mb'])} |"
        )
    record_speeds(rows, inputs, args)


def record_speeds(rows: dict[str, dict], inputs: dict, args: argparse.Namespace) -> None:
    """One ``speed`` line per lit-meta configuration, next to learn2learn's time in this run (``report.py``)."""
    peer = rows.get("learn2learn")
    if peer is None:
        return
    peer_s = statistics.median(peer["seconds"])
    for config, suffix in (("lit-meta loop", ""), ("lit-meta compiled", ", compiled")):
        row = rows[config]
        ours_s = statistics.median(row["seconds"])
        print(f"{config}: {peer_s / ours_s:.2f}x learn2learn (medians)")
        note = (
            f"real test episodes, weights {inputs['weights']}; accuracy {row['acc']:.2f} ± {row['ci95']:.2f} against "
            f"learn2learn's {peer['acc']:.2f} ± {peer['ci95']:.2f}; {row['equal_predictions']:.2%} of the query "
            f"predictions equal to the eager loop's; warm-up episode {max(row['warm_up_s']):.1f} s (compiling)"
        )
        figures = {
            "what": f"{inputs['episodes']}-episode evaluation, {args.steps} inner steps{suffix}", "learner": "MAML",
            "setting": "omniglot 5w1s, Conv4-64", "ours_s": round(ours_s, 1), "peer": "learn2learn",
            "peer_s": round(peer_s, 1), "ratio": round(peer_s / ours_s, 2),
            "ours_peak_mb": round(max(row["peak_rss_mb"])), "peer_peak_mb": round(max(peer["peak_rss_mb"])),
            "run": f"{config} (eval_execution), {args.threads} threads, {args.rounds} rounds", "note": note,
            "acc": row["acc"], "ci95": row["ci95"], "peer_acc": peer["acc"], "peer_ci95": peer["ci95"],
            "equal_predictions": row["equal_predictions"], "seconds": row["seconds"], "peer_seconds": peer["seconds"],
        }  # fmt: skip
        record_result("evaluation_speed", "speed", figures, budget={"episodes": inputs["episodes"]})


if __name__ == "__main__":
    main()
