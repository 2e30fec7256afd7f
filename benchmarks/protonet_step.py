"""Time one Prototypical Networks training episode against learn2learn, in the same run.

Setup (ProtoNet issue): Conv4 embedding (64 filters, BatchNorm, max-pool, no head: a
64-d embedding), Omniglot shapes 28x28x1, one episode per step (meta-batch 1), squared
Euclidean distance, cross-entropy on the query, Adam (lr 1e-3), 2 threads. Two setups:
60-way 5-shot 5-query (the training episodes of Snell et al., 2017) and 5-way 5-shot
15-query. A step is forward + backward + Adam step; lit-meta's is
``loss = ProtoNet.meta_loss(batch); opt.zero_grad(); loss.backward(); opt.step()``.
Each configuration runs in a fresh subprocess (so peak RSS is its own) from the same
initial weights and the same episode; the first step's loss and gradients are saved
and compared across implementations.

learn2learn (0.2.0) runs ``LightningPrototypicalNetworks.meta_learn`` with
``PrototypicalClassifier`` (``benchmarks/peers/learn2learn_protonet.py``) on the same
Conv4 and the same support and query sets (``meta_learn`` sorts the episode by label and
takes each class's first ``shots`` examples as support; the episode is handed over in
the order its unstable CPU sort turns into lit-meta's split, checked before timing).
Matched: its defaults ``distance="euclidean"`` and ``normalize=False`` compute minus the
squared Euclidean distance to the class means as logits, as lit-meta's ``ProtoNet`` does
(temperature 1); both embed support and query in one call, so BatchNorm normalises with
the same batch statistics; the loss is the mean cross-entropy over the query in both.
Only the order of the examples in the embedding call differs (learn2learn embeds them
class by class, support and query mixed). The loss agrees bit for bit (convolutions work
per example, and CPU BatchNorm's statistics do not depend on the order of the batch);
the gradients agree to float32 rounding, not bit for bit: a convolution's weight and
bias gradients are sums over every example and pixel of the batch (470,400 terms per
channel in the first layer with 60 ways), added in another order (1e-5 to 1e-3 on the
episodes tried; the convolution biases' gradients are zero in exact arithmetic, since a
training-mode BatchNorm follows, so theirs are pure rounding). The last column is the
yardstick: each implementation's max |gradient - float64 gradient| (lit-meta's first
step in float64, not timed). It is about the same for both and as large as their
difference or larger (the float32 rounding of the step itself, ~1e-3 on these
random-pixel episodes), so the difference is rounding, not another computation.

learn2learn runs in a separate "peer" environment (learn2learn does not build on Python
3.11 from PyPI; ``benchmarks/peer_env.sh`` builds it): pass its interpreter with
``--peer-python`` or ``$LIT_META_PEER_PYTHON``. Without it only lit-meta is timed.
easyfsl (1.5.0) is not compared: ``easyfsl.methods`` imports ``easyfsl.modules``, which
imports torchvision at module level, and the PyPI torchvision wheels do not load with
this CPU torch build.

``--allocator jemalloc`` preloads jemalloc (Debian's libjemalloc2) for every
configuration, with page decay off (like with like), as ``maml_step.py`` does.

    python benchmarks/protonet_step.py --peer-python /work/peer/venv/bin/python-l2l --steps 30 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from peak_rss import current_rss_mb, peak_rss_mb
from results_log import record_result
from subprocess_runs import JEMALLOC, allocator_environment_note, run_configuration

HERE = Path(__file__).resolve().parent
SETUPS = {  # name: (ways, shots, queries)
    "60-way 5-shot 5-query": (60, 5, 5),
    "5-way 5-shot 15-query": (5, 5, 15),
}
CONFIGS = {
    "lit-meta": {"impl": "lit-meta"},
    "learn2learn": {"impl": "learn2learn"},
    # Not timed: the first step in float64, the yardstick for the float32 gradients' rounding.
    "float64 reference": {"impl": "lit-meta", "reference": True},
}
PEERS = [name for name, config in CONFIGS.items() if config["impl"] != "lit-meta"]  # timed against lit-meta


def setup_key(setup: str) -> str:
    return setup.replace(" ", "_")


def make_inputs(workdir: Path, setups: list[str]) -> None:
    """Initial weights (lit-meta's Conv4 without head, parameter order) and one episode per setup."""
    import torch

    from lit_meta.backbones import Conv4

    torch.manual_seed(0)
    net = Conv4(in_channels=1, out_features=None)
    torch.save([p.detach() for p in net.parameters()], workdir / "weights.pt")
    for setup in setups:
        ways, shots, queries = SETUPS[setup]
        generator = torch.Generator().manual_seed(list(SETUPS).index(setup) + 1)  # the same whatever else runs
        episode = {
            "support_x": torch.rand(1, ways * shots, 1, 28, 28, generator=generator),
            "support_y": torch.arange(ways).repeat_interleave(shots).unsqueeze(0),
            "query_x": torch.rand(1, ways * queries, 1, 28, 28, generator=generator),
            "query_y": torch.arange(ways).repeat_interleave(queries).unsqueeze(0),
        }
        torch.save(episode, workdir / f"episode-{setup_key(setup)}.pt")


def run_lit_meta(config: dict, workdir: Path, steps: int, warmup: int) -> dict:
    """lit-meta's ProtoNet: ``meta_loss`` + backward + Adam step, as the Trainer runs it.

    The float64 reference runs the first step only, in float64.
    """
    import torch

    from lit_meta.backbones import Conv4
    from lit_meta.data.episode import EpisodeBatch
    from lit_meta.learners import ProtoNet

    episode = torch.load(workdir / f"episode-{config['setup_key']}.pt")
    batch = EpisodeBatch(**episode, classes=torch.arange(config["ways"]).unsqueeze(0))
    net = Conv4(in_channels=1, out_features=None)
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(workdir / "weights.pt"), strict=True):
            p.copy_(w)
    model = ProtoNet(net)
    model.train()
    if config.get("reference"):
        model.double()
        batch = batch.to(torch.float64)
        steps, warmup = 1, 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start_rss = current_rss_mb()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = [p.grad.clone() for p in net.parameters()]
            torch.save({"loss": loss.item(), "grads": grads}, workdir / f"grads-{config['key']}.pt")
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"times": times[warmup:], "start_rss_mb": start_rss}


def worker(config: dict, workdir: Path, steps: int, warmup: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    result = run_lit_meta(config, workdir, steps, warmup)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def launch(setup: str, name: str, args: argparse.Namespace, workdir: Path) -> dict | None:
    ways, shots, queries = SETUPS[setup]
    config = {**CONFIGS[name], "ways": ways, "shots": shots, "queries": queries, "setup_key": setup_key(setup)}
    config["key"] = f"{config['setup_key']}-{name.replace(' ', '_')}"
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--workdir", str(workdir), "--one", json.dumps(config)]  # fmt: skip
    if config["impl"] == "learn2learn":
        if not args.peer_python:
            return None
        command = [args.peer_python, str(HERE / "peers" / "learn2learn_protonet.py"), *common]
    else:
        command = [sys.executable, __file__, *common]
    result = run_configuration(command, args.allocator, f"{setup}, {name}")
    if result is None:
        return None
    result["grads"] = workdir / f"grads-{config['key']}.pt"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed episodes per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allocator", choices=["default", "jemalloc"], default="default")
    parser.add_argument("--peer-python", default=os.environ.get("LIT_META_PEER_PYTHON"))
    parser.add_argument("--setups", nargs="*", default=list(SETUPS), help="subset of: " + "; ".join(SETUPS))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="subset of: " + "; ".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        worker(json.loads(args.one), args.workdir, args.steps, args.warmup, args.threads)
        return
    for setup in args.setups:
        if setup not in SETUPS:
            parser.error(f"unknown setup {setup!r}: use one of {'; '.join(SETUPS)}")
    for name in args.configs:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}: use one of {'; '.join(CONFIGS)}")
    if args.allocator == "jemalloc" and not JEMALLOC.exists():
        parser.error(f"{JEMALLOC} not found: apt-get install libjemalloc2")

    import torch

    print("command:", shlex.join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads, allocator {args.allocator} "
          f"({allocator_environment_note(args.allocator)})")  # fmt: skip
    print(f"step: Conv4-64 embedding (no head), 28x28x1, one episode, squared Euclidean, Adam lr 1e-3; "
          f"median of {args.steps} episodes after {args.warmup} warm-up")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_inputs(workdir, args.setups)
        results: dict[str, dict[str, dict]] = {}
        for setup in args.setups:
            for name in args.configs:
                result = launch(setup, name, args, workdir)
                if result is None:
                    print(f"{setup}, {name}: skipped" + ("" if args.peer_python else " (no --peer-python)"))
                    continue
                results.setdefault(setup, {})[name] = result
        report(results, args)


def max_diffs(ours: Path, theirs: Path) -> tuple[float, float]:
    """Max |loss difference| and max |gradient difference| (over all parameters) of two first steps."""
    import torch

    a, b = torch.load(ours), torch.load(theirs)
    grad = max(float((x.double() - y.double()).abs().max()) for x, y in zip(a["grads"], b["grads"], strict=True))
    return abs(a["loss"] - b["loss"]), grad


def record_speed(
    setup: str, ours: dict, peer: str, theirs: dict, diffs: tuple[float, float], args: argparse.Namespace
) -> None:
    """One ``speed`` line for ``report.py``: lit-meta's episode next to a peer's, measured in this run."""
    ours_s, peer_s = statistics.median(ours["times"]), statistics.median(theirs["times"])
    figures = {
        "what": "ProtoNet training episode", "learner": "ProtoNet", "setting": f"omniglot-shaped {setup}",
        "ours_s": round(ours_s, 4), "peer": peer, "peer_s": round(peer_s, 4), "ratio": round(peer_s / ours_s, 2),
        "ours_peak_mb": round(ours["peak_rss_mb"]), "peer_peak_mb": round(theirs["peak_rss_mb"]), "run": args.allocator,
        "note": f"max abs loss diff {diffs[0]:.1e}, grad diff {diffs[1]:.1e}",
    }  # fmt: skip
    record_result("speed", "speed", figures, budget={"steps": args.steps, "warmup": args.warmup})


def report(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> None:
    print("\n| setup | implementation | median s/episode | episodes/s | peak RSS MB (at start) | peer s / lit-meta s "
          "| max abs loss diff | max abs grad diff | max abs grad err vs float64 |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for setup, runs in results.items():
        ours, reference = runs.get("lit-meta"), runs.pop("float64 reference", None)
        for name, r in runs.items():
            median = statistics.median(r["times"])
            ratio = loss_diff = grad_diff = error = ""
            if ours and name != "lit-meta":
                ratio = f"{median / statistics.median(ours['times']):.2f}x"
                loss, grad = max_diffs(ours["grads"], r["grads"])
                loss_diff, grad_diff = f"{loss:.1e}", f"{grad:.1e}"
                if name in PEERS:
                    record_speed(setup, ours, name, r, (loss, grad), args)
            if reference:
                error = f"{max_diffs(reference['grads'], r['grads'])[1]:.1e}"
            rss = f"{r['peak_rss_mb']:.0f} ({r['start_rss_mb']:.0f})"
            print(f"| {setup} | {name} | {median:.4f} | {1 / median:.1f} | {rss} | {ratio} "
                  f"| {loss_diff} | {grad_diff} | {error} |")  # fmt: skip
        peers = {name: r for name, r in runs.items() if name in PEERS}
        if ours and peers:
            fastest = min(peers, key=lambda name: statistics.median(peers[name]["times"]))
            speed = statistics.median(peers[fastest]["times"]) / statistics.median(ours["times"])
            memory = ours["peak_rss_mb"] <= peers[fastest]["peak_rss_mb"]
            met = "met" if speed >= 1 and memory else "not met"
            verdicts.append(f"{setup}: fastest peer {fastest}, its s / lit-meta s {speed:.2f}x, lit-meta "
                            f"{'equal or lower' if memory else 'higher'} peak RSS: target {met}")  # fmt: skip
    if verdicts:
        print("\ntarget (no slower than the fastest peer at equal or lower peak RSS):")
        for line in verdicts:
            print("  " + line)


if __name__ == "__main__":
    main()
