"""Time one MAML meta-training step against learn2learn, in the same run.

Setup (issue 3): Conv4 (64 filters, BatchNorm, max-pool), Omniglot shapes 28x28x1,
5-way 1-shot 15-query, meta-batch 32, 1 inner step, inner lr 0.4, Adam, 2 threads.
Each configuration runs in a fresh subprocess (so peak RSS is its own) from the same
initial weights and the same meta-batch; the first step's meta-gradients are saved and
compared across implementations.

learn2learn runs in a separate "peer" environment (it does not build on Python 3.11
from PyPI; ``benchmarks/peer_env.sh`` builds it): pass its interpreter with
``--peer-python`` or ``$LIT_META_PEER_PYTHON``. Without it only lit-meta is timed.
lit-meta runs as ``lit-meta fit`` runs it by default (the command line owns its process,
so glibc malloc keeps freed memory for the next task: ``retain_cpu_memory=True`` here,
:mod:`lit_meta.glibc_malloc`); ``--no-retain`` leaves malloc as it is, as a learner
used from Python does by default. ``--allocator`` sets every configuration's process alike:
``default`` (the system's malloc as it is, so learn2learn runs with glibc's defaults),
``glibc-retain`` (glibc with the thresholds lit-meta sets, for learn2learn too: like
with like), ``glibc-retain-no-tcache`` (the same without glibc's per-thread cache, a
diagnostic of heap fragmentation: see ``subprocess_runs.py``) or ``jemalloc`` (Debian's
libjemalloc2 preloaded, page decay off).

The "Trainer default" configurations run ``Trainer.fit`` with every default of ``MAML``
(``execution="auto"`` times its paths on the first batch; the table names the path it
chose), in a run planned at 60,000 steps. ``--vmap-budget-mb`` sets their
``vmap_memory_budget_mb``.

Peak RSS is the whole process's. Each process also reports its RSS just before its
first step (imports, model, data and optimizer: lit-meta's imports include Lightning,
and learn2learn's process imports ``torch._dynamo`` when it builds Adam) and how far its
steps took it above that.

Compare like with like: run lit-meta from the README's install (``pip install -e
".[dev]"``), whose optional packages match the peer environment's. torchmetrics, which
Lightning imports, imports matplotlib whenever it is installed (25-30 MB of RSS), so a
venv that also holds the plotting benchmarks' matplotlib raises lit-meta's peak by that
much. Each process lists the optional packages it imported, and the report says when
lit-meta's imported matplotlib. (learn2learn's process imports scipy, a learn2learn
requirement, and the peer environment's torchvision stub: those are its own.) It also
gives each process's file-backed RSS (libtorch's mapped pages), which differed by 38 MB
between two venvs holding the same libtorch.

    python benchmarks/maml_step.py --steps 7 --allocator jemalloc
    python benchmarks/maml_step.py --rounds 3 --allocator glibc-retain
    python benchmarks/maml_step.py --rounds 3 --configs "lit-meta compiled, 2nd order" "learn2learn, 2nd order"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import (
    current_rss_mb,
    environment_footprint,
    minor_page_faults,
    peak_rss_mb,
    peak_rss_since_reset_mb,
    reset_peak_rss,
)
from results_log import record_result
from subprocess_runs import ALLOCATOR_ENVIRONMENTS, JEMALLOC, allocator_environment_note, run_configuration

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "lit-meta loop, 2nd order": {"impl": "lit-meta", "execution": "loop", "first_order": False},
    "lit-meta loop, 1st order": {"impl": "lit-meta", "execution": "loop", "first_order": True},
    "lit-meta compiled, 2nd order": {"impl": "lit-meta", "execution": "compiled", "first_order": False},
    "lit-meta compiled, 1st order": {"impl": "lit-meta", "execution": "compiled", "first_order": True},
    "lit-meta vmap, 2nd order": {"impl": "lit-meta", "execution": "vmap", "first_order": False},
    "lit-meta Trainer default, 2nd order": {"impl": "lit-meta", "trainer": True, "first_order": False},
    "lit-meta Trainer default, 1st order": {"impl": "lit-meta", "trainer": True, "first_order": True},
    "learn2learn, 2nd order": {"impl": "learn2learn", "first_order": False},
    "learn2learn, 1st order": {"impl": "learn2learn", "first_order": True},
    "lit-meta eval": {"impl": "lit-meta", "execution": "loop", "first_order": False, "eval": True},
    "learn2learn eval": {"impl": "learn2learn", "first_order": False, "eval": True},
}
EVAL_EPISODES, EVAL_STEPS = 600, 10
# Imported by lit-meta's process only where installed, and not installed by the README's install.
NOT_IN_README_INSTALL = {"matplotlib"}


def make_inputs(workdir: Path, ways: int, shots: int, queries: int, tasks: int) -> None:
    """Initial weights (lit-meta's Conv4, parameter order) and one meta-batch, shared by all runs."""
    import torch

    from lit_meta.backbones import Conv4

    torch.manual_seed(0)
    net = Conv4(in_channels=1, out_features=ways)
    torch.save([p.detach() for p in net.parameters()], workdir / "weights.pt")
    batch = {
        "support_x": torch.rand(tasks, ways * shots, 1, 28, 28),
        "support_y": torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous(),
        "query_x": torch.rand(tasks, ways * queries, 1, 28, 28),
        "query_y": torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous(),
    }
    torch.save(batch, workdir / "batch.pt")


def run_lit_meta(config: dict, workdir: Path, steps: int, warmup: int, inner_lr: float) -> dict:
    """One configuration of lit-meta's MAML: ``meta_loss`` + backward + Adam step, as the Trainer runs it."""
    import torch

    from lit_meta.backbones import Conv4
    from lit_meta.data.episode import EpisodeBatch
    from lit_meta.learners import MAML

    batch_tensors = torch.load(workdir / "batch.pt")
    batch = EpisodeBatch(**batch_tensors, classes=torch.zeros(len(batch_tensors["support_x"]), 5, dtype=torch.long))
    net = Conv4(in_channels=1, out_features=5)
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(workdir / "weights.pt"), strict=True):
            p.copy_(w)
    if config.get("trainer"):
        budget = {"vmap_memory_budget_mb": config["vmap_budget_mb"]} if config["vmap_budget_mb"] is not None else {}
        learner = MAML(
            net, inner_lr=inner_lr, first_order=config["first_order"], retain_cpu_memory=config["retain"], **budget
        )
        return run_trainer(learner, batch, workdir, config, steps, warmup)
    learner = MAML(net, inner_lr=inner_lr, first_order=config["first_order"], execution=config["execution"])
    if config["retain"]:  # what RetainFreedCPUMemory, which lit-meta fit adds to its Trainer, does when it starts
        from lit_meta.glibc_malloc import retain_freed_memory

        retain_freed_memory()
    if config.get("eval"):
        # What validation/test does per episode: adapt a copy on the support set, label the query set.
        start = time.perf_counter()
        for i in range(EVAL_EPISODES):
            episode = batch[i % len(batch)]
            learner.adapt(episode.support_x, episode.support_y, steps=EVAL_STEPS)(episode.query_x).argmax(-1)
        return {"times": [time.perf_counter() - start]}
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    start_rss = current_rss_mb()
    times = []
    for step in range(warmup + steps):
        if step == warmup:
            reset_peak_rss()
            faults = minor_page_faults()
        start = time.perf_counter()
        optimizer.zero_grad()
        learner.meta_loss(batch).backward()
        if step == 0:
            torch.save([p.grad.clone() for p in net.parameters()], workdir / f"grads-{config['key']}.pt")
        optimizer.step()
        times.append(time.perf_counter() - start)
    faults_per_step = (minor_page_faults() - faults) / steps
    return {
        "times": times[warmup:],
        "steady_rss_mb": peak_rss_since_reset_mb(),
        "start_rss_mb": start_rss,
        "faults_per_step": faults_per_step,
    }


def run_trainer(learner, batch, workdir: Path, config: dict, steps: int, warmup: int) -> dict:
    """The step as ``lit-meta fit`` runs it: every default of ``MAML`` (``execution="auto"``, which
    times its paths on the first batch) and the command line's ``retain_cpu_memory=True``, in a run
    planned at the paper's 60,000 steps and stopped after ``warmup + steps``."""
    import lightning as L
    import torch

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.faults = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                reset_peak_rss()
                self.faults = minor_page_faults()
            self.start = time.perf_counter()

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            if trainer.global_step == 0:
                params = module.backbone.parameters()
                torch.save([p.grad.clone() for p in params], workdir / f"grads-{config['key']}.pt")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.start)
            if batch_idx + 1 == warmup + steps:
                self.faults = minor_page_faults() - self.faults
                trainer.should_stop = True

    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=60_000, limit_val_batches=0, accelerator="cpu", devices=1, callbacks=[timer], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    start_rss = current_rss_mb()
    loader = torch.utils.data.DataLoader([batch] * (warmup + steps), batch_size=None)
    trainer.fit(learner, train_dataloaders=loader)
    return {
        "times": timer.times[warmup:],
        "steady_rss_mb": peak_rss_since_reset_mb(),
        "start_rss_mb": start_rss,
        "faults_per_step": timer.faults / steps,
        "path": learner.execution_path(batch),
    }


def worker(config: dict, workdir: Path, steps: int, warmup: int, inner_lr: float, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    result = run_lit_meta(config, workdir, steps, warmup, inner_lr)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result | environment_footprint()))


def launch(name: str, config: dict, args: argparse.Namespace, workdir: Path) -> dict | None:
    config = {
        **config,
        "key": name.replace(" ", "_").replace(",", ""),
        "retain": not args.no_retain,
        "vmap_budget_mb": args.vmap_budget_mb,
    }
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--inner-lr", str(args.inner_lr),
              "--threads", str(args.threads), "--workdir", str(workdir), "--one", json.dumps(config)]  # fmt: skip
    if config["impl"] == "learn2learn":
        if not args.peer_python:
            return None
        command = [args.peer_python, str(HERE / "peers" / "learn2learn_maml.py"), *common]
    else:
        command = [sys.executable, __file__, *common]
    result = run_configuration(command, args.allocator, name)
    if result is None:
        return None
    result["grads"] = workdir / f"grads-{config['key']}.pt"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=7, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="fresh processes per configuration, interleaved; the median is over all their timed steps",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--allocator", choices=list(ALLOCATOR_ENVIRONMENTS), default="default")
    parser.add_argument(
        "--no-retain", action="store_true", help="lit-meta with retain_cpu_memory=False (malloc as it is)"
    )
    parser.add_argument(
        "--vmap-budget-mb", type=float, default=None,
        help="vmap_memory_budget_mb of the Trainer default configurations (default: MAML's)",
    )  # fmt: skip
    parser.add_argument("--peer-python", default=os.environ.get("LIT_META_PEER_PYTHON"))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="subset of: " + "; ".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        worker(json.loads(args.one), args.workdir, args.steps, args.warmup, args.inner_lr, args.threads)
        return
    if args.allocator == "jemalloc" and not JEMALLOC.exists():
        parser.error(f"{JEMALLOC} not found: apt-get install libjemalloc2")

    import torch

    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads, allocator {args.allocator} "
          f"({allocator_environment_note(args.allocator)}); "
          f"lit-meta retain_cpu_memory={not args.no_retain}")  # fmt: skip
    print(f"step: Conv4-64, 28x28x1, 5-way 1-shot 15-query, meta-batch {args.tasks}, 1 inner step, "
          f"lr {args.inner_lr}, Adam; median of {args.rounds} x {args.steps} steps, each process after "
          f"{args.warmup} warm-up steps (the first compiles on the compiled path)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_inputs(workdir, ways=5, shots=1, queries=15, tasks=args.tasks)
        results: dict[str, dict] = {}
        # Rounds interleave the configurations, so a slow spell of the machine hits all of them alike.
        for _ in range(args.rounds):
            for name in args.configs:
                result = launch(name, CONFIGS[name], args, workdir)
                if result is None:
                    print(f"{name}: skipped" + ("" if args.peer_python else " (no --peer-python)"))
                    continue
                merged = results.setdefault(
                    name,
                    {**result, "times": [], "peak_rss_mb": 0.0, "steady_rss_mb": 0.0}
                    | {"faults": [], "peaks": [], "paths": [], "file_rss": [], "optional_imports": set()},
                )
                merged["times"] += result["times"]
                merged["faults"].append(result.get("faults_per_step", math.nan))
                merged["peaks"].append((result.get("start_rss_mb", math.nan), result["peak_rss_mb"]))
                merged["paths"].append(result.get("path"))
                merged["file_rss"].append(result.get("file_rss_mb", math.nan))
                merged["optional_imports"].update(result.get("optional_imports", []))
                for key in ("peak_rss_mb", "steady_rss_mb"):
                    merged[key] = max(merged[key], result.get(key, 0.0))
        record_speeds(results, args)
        report(results, args.tasks)


def report(results: dict[str, dict], tasks: int) -> None:
    import torch

    evals = {name: results.pop(name) for name in list(results) if "eval" in name}
    print(
        "\n| configuration | median s/step | tasks/s | peak RSS MB: whole run (timed steps) "
        "| RSS MB before the first step | peak minus that | page faults/step "
        "| vs learn2learn (same order) | max |grad diff| |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for name, r in results.items():
        median = statistics.median(r["times"])
        order = "2nd" if "2nd" in name else "1st"
        peer = results.get(f"learn2learn, {order} order")
        ratio, diff = "", ""
        if peer and "learn2learn" not in name:
            ratio = f"{statistics.median(peer['times']) / median:.2f}x faster"
            ours, theirs = torch.load(r["grads"]), torch.load(peer["grads"])
            diff = f"{max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)):.1e}"
        rss = f"{r['peak_rss_mb']:.0f} ({r['steady_rss_mb']:.0f})"
        # Per process: what it held before its first step (imports, model, data) and how far
        # the steps (compiling included) took it above that; the max over rounds.
        start = statistics.median(before for before, _ in r["peaks"])
        growth = max(peak - before for before, peak in r["peaks"])
        faults = f"{statistics.mean(r['faults']):,.0f}"
        label = f"{name} (chose {', '.join(r['paths'])})" if any(r["paths"]) else name
        print(
            f"| {label} | {median:.3f} | {tasks / median:.1f} "
            f"| {rss} | {start:.0f} | {growth:.0f} "
            f"| {faults} | {ratio} | {diff} |"
        )
    print("\nPeak RSS MB of each process (the table gives the largest), and what its RSS held besides its work:")
    for name, r in results.items():
        peaks = ", ".join(f"{peak:.0f}" for _, peak in r["peaks"])
        files = ", ".join(f"{mb:.0f}" for mb in r["file_rss"])
        optional = ", ".join(sorted(r["optional_imports"])) or "none"
        print(f"- {name}: {peaks} (file-backed: {files}; optional packages imported: {optional})")
    lit_meta_imports = set().union(*(r["optional_imports"] for n, r in results.items() if n.startswith("lit-meta")))
    if extra := sorted(lit_meta_imports & NOT_IN_README_INSTALL):
        print(
            f"NOT LIKE WITH LIKE: lit-meta's processes imported {', '.join(extra)}, "
            "which the README's install does not hold (torchmetrics imports matplotlib whenever it is installed), "
            "so their peak RSS includes it: run lit-meta from the README's install."
        )
    if evals:
        print(f"\n| evaluation: {EVAL_EPISODES} episodes x {EVAL_STEPS} inner steps | seconds | peak RSS MB |")
        print("| --- | --- | --- |")
        for name, r in evals.items():
            print(f"| {name} | {r['times'][0]:.1f} | {r['peak_rss_mb']:.0f} |")


def record_speeds(results: dict[str, dict], args: argparse.Namespace) -> None:
    """One ``speed`` line per lit-meta configuration timed next to learn2learn's in this run (``report.py``)."""
    for name, r in results.items():
        if not name.startswith("lit-meta"):
            continue
        evaluation = "eval" in name
        order = "2nd" if "2nd" in name else "1st"
        peer = results.get("learn2learn eval" if evaluation else f"learn2learn, {order} order")
        if peer is None:
            continue
        ours_s, peer_s = (statistics.median(times) for times in (r["times"], peer["times"]))
        what = f"{EVAL_EPISODES}-episode evaluation" if evaluation else f"training step, {order} order"
        figures = {
            "what": f"MAML {what}", "learner": "MAML", "setting": f"omniglot 5w1s, meta-batch {args.tasks}, Conv4-64",
            "ours_s": round(ours_s, 3), "peer": "learn2learn", "peer_s": round(peer_s, 3),
            "ratio": round(peer_s / ours_s, 2),
            "ours_peak_mb": round(r["peak_rss_mb"]), "peer_peak_mb": round(peer["peak_rss_mb"]),
            "ours_peaks_mb": [round(peak) for _, peak in r.get("peaks", [])],
            "peer_peaks_mb": [round(peak) for _, peak in peer.get("peaks", [])],
            "run": f"{name}, allocator {args.allocator}",
            "note": f"paths chosen: {', '.join(map(str, r['paths']))}" if any(r.get("paths", [])) else None,
        }  # fmt: skip
        record_result("speed", "speed", figures, budget={"rounds": args.rounds, "steps": args.steps})


if __name__ == "__main__":
    main()
