"""lit-meta side by side with peer libraries: the same episodes, initial weights and steps, in one run (issue 19).

Pairs: MAML, first-order MAML and Meta-SGD against learn2learn 0.2.0; Prototypical, Matching
and Relation networks against easyfsl 1.5.0. For each pair this process

1. draws the episodes through lit-meta's data layer (``EpisodicDataModule("omniglot")``: the
   published Vinyals split, 28x28, rotations by 90 degrees as new classes; 5-way 1-shot 15-query)
   and writes them once (``episode_stream.py``): the training stream, ``steps x meta-batch``
   episodes in order, and ``--val-episodes`` fixed validation episodes;
2. builds lit-meta's learner (seed 0) and writes its initial weights and its backbone's outputs
   on one validation episode; each side maps the weights onto its network and checks that it
   computes the same outputs before training;
3. runs the two sides as two concurrent subprocesses of one thread each
   (``peers/side_protocol.py``): lit-meta's ``meta_loss`` with the optimizer its
   ``configure_optimizers`` gives and ``evaluate_outputs`` in eval mode under inference mode, as
   the Trainer runs them; the peer with its library's documented loop
   (``peers/learn2learn_side_by_side.py``, ``peers/easyfsl_side_by_side.py``). Each evaluates the
   validation episodes every ``--eval-every`` steps: mean accuracy and 95% interval
   (1.96 std / sqrt(n));
4. compares the first batch's gradients of the weights both sides share (max |difference|) and the
   curves: they agree when at every point the difference of the accuracies lies within the 95%
   interval of a difference, ``1.96 sqrt(se_1^2 + se_2^2)``. For ProtoNet and Relation the easyfsl
   side also gives its first gradient with what differs by design undone (one backbone call for
   support and query; squared distances): ``gradient_max_abs_diff_aligned``;
5. records a ``"curves"`` line in ``benchmarks/results/side_by_side.jsonl``.

Configurations (the papers' where both libraries allow it): MAML: lit-meta's Conv4, inner lr 0.4,
1 inner step in training and 3 at evaluation, Adam 1e-3, meta-batch ``--maml-meta-batch`` (4 by
default, not the paper's 32: the CPU budget), ``execution="loop"``. Meta-SGD: the same, with every
weight's learned rate starting at 0.1 (lit-meta's configs; learn2learn's ``MetaSGD(lr=0.1)``), the
rates trained by the same Adam and compared in the first gradients too. ProtoNet: Conv4 embedding,
Euclidean, Adam 1e-3 (lit-meta squares the distance, as the paper; easyfsl does not and cannot).
Matching: Conv4 embedding with full context embeddings on both sides, lit-meta at temperature 1
(easyfsl has none; ``--matching-temperature 0.1``: the learned temperature of lit-meta's configs)
and 5 read steps (easyfsl reads once per support example: 5 in 5-way 1-shot); the two query LSTMs
differ in shape (see the easyfsl script), so only the backbone and the support LSTM start alike.
Relation: lit-meta's ``relation_embedding()`` and relation module on both sides, MSE.
One episode per step for the metric learners.

Rerun (the peer environments first, then the pairs; each side uses one thread)::

    bash benchmarks/peer_env.sh                          # learn2learn: /work/peer/venv/bin/python-l2l
    PEER_LIBRARY=easyfsl bash benchmarks/peer_env.sh     # easyfsl: /work/peer/easyfsl-venv/bin/python-easyfsl
    python benchmarks/side_by_side.py --pairs maml fomaml meta_sgd protonet matching relation

``--l2l-python`` / ``--easyfsl-python`` (or ``$LIT_META_L2L_PYTHON`` / ``$LIT_META_EASYFSL_PYTHON``)
name other peer interpreters; ``--steps maml=200`` sets a pair's steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from networks import load_state, outputs_in_eval_mode, save_state  # noqa: E402

from episode_stream import EpisodeItems, EpisodeStream, write_stream  # noqa: E402
from results_log import record_result  # noqa: E402

PEERS = {"maml": "learn2learn", "fomaml": "learn2learn", "meta_sgd": "learn2learn", "protonet": "easyfsl"}
PEERS |= {"matching": "easyfsl", "relation": "easyfsl"}
LEARNER_NAMES = {"maml": "MAML", "fomaml": "FOMAML", "meta_sgd": "Meta-SGD", "protonet": "ProtoNet"}
LEARNER_NAMES |= {"matching": "MatchingNet", "relation": "RelationNet"}
DEFAULT_STEPS = {"maml": 150, "fomaml": 150, "meta_sgd": 150, "protonet": 600, "matching": 600, "relation": 600}
GRADIENT_PAIRS = ("maml", "fomaml", "meta_sgd")  # meta-batch --maml-meta-batch; the others take 1 episode a step
INNER_LR = {"maml": 0.4, "fomaml": 0.4, "meta_sgd": 0.1}  # --inner-lr overrides
WAYS, SHOTS, QUERIES = 5, 1, 15
NOTES = {
    "maml": "learn2learn's example loop (clone/adapt per task, gradients / tasks); both sides use BatchNorm "
    "batch statistics in training and evaluation.",
    "protonet": "easyfsl scores minus the Euclidean distance, lit-meta minus its square (the paper's); easyfsl "
    "embeds support and query in two backbone calls (BatchNorm statistics of each set; running statistics "
    "updated twice a step), lit-meta in one; the gradients differ for both reasons.",
    "matching": "both with full context embeddings; the query attention LSTMs differ (easyfsl: LSTMCell(2D -> D) "
    "fed [f'(x), read-out], attention from the hidden state, one read per support example, query not "
    "normalised in the cosine; lit-meta: the paper's LSTMCell(D -> 2D) with hidden [h, r], 5 reads, "
    "cosine over both, temperature 1), so only backbone and support LSTM start alike; easyfsl adds 1e-6 "
    "inside its log; two backbone calls as for ProtoNet. The gradient difference covers the shared weights.",
    "relation": "the same embedding and relation module; easyfsl averages a class's support maps (lit-meta sums "
    "them: the same in 1-shot) and embeds support and query in two backbone calls (see ProtoNet).",
}
NOTES["fomaml"] = NOTES["maml"] + " First order on both sides."
NOTES["meta_sgd"] = NOTES["maml"] + " learn2learn's MetaSGD; the learned rates' first gradients are compared too."


# -- the episode stream, from lit-meta's data layer ---------------------------------------------
def episode_items(plan, source) -> EpisodeItems:
    """The item indices, labels and class ids :class:`~lit_meta.data.episode.EpisodeDataset` makes of ``plan``."""
    if plan.order is not None:
        raise ValueError("the stream keeps class-major support sets (support_order='by_class')")
    ways, shots = plan.support.shape
    return EpisodeItems(
        support=plan.support.reshape(-1),
        support_y=np.repeat(np.arange(ways), shots),
        query=plan.query.reshape(-1),
        query_y=np.repeat(np.arange(ways), plan.query.shape[1]),
        classes=source.class_ids[plan.task],
    )


def write_datamodule_stream(folder: Path, dm) -> None:
    """Writes the training and validation episodes of an ``EpisodicDataModule``, in the order its loaders give
    them (training: the first epoch's), each episode's items loaded by its split as lit-meta loads them."""
    dm.setup("fit")
    splits = {split: (dm.splits[split], list(dm.samplers[split])) for split in ("train", "val")}
    write_stream(
        folder,
        {split: [episode_items(plan, source) for plan in plans] for split, (source, plans) in splits.items()},
        lambda split, indices: splits[split][0].load(indices).numpy(),
        ways=dm.hparams.ways, shots=dm.hparams.shots, queries=dm.hparams.queries,
        meta_batch_size=dm.hparams.meta_batch_size,
    )  # fmt: skip


def omniglot_datamodule(args: argparse.Namespace, meta_batch: int, steps: int):
    """Omniglot as lit-meta's configs set it: the Vinyals split, 28x28, rotations as classes; no augmentation."""
    from lit_meta.data import EpisodicDataModule

    return EpisodicDataModule(
        "omniglot", root=str(args.data), dataset_kwargs={"cache_dir": str(args.cache)},
        ways=WAYS, shots=SHOTS, queries=QUERIES, meta_batch_size=meta_batch, train_episodes=steps * meta_batch,
        val_episodes=args.val_episodes, seed=args.seed,
    )  # fmt: skip


# -- lit-meta's side ------------------------------------------------------------------------------
def build_learner(pair: str, inner_lr: float, eval_inner_steps: int):
    """lit-meta's learner of ``pair`` (seed 0) and the modules whose weights the peer takes."""
    from lit_meta import MAML, MatchingNet, MetaSGD, ProtoNet, RelationNet
    from lit_meta.backbones import Conv4
    from lit_meta.learners.relation_net import relation_embedding

    torch.manual_seed(0)
    if pair in ("maml", "fomaml"):
        learner = MAML(
            Conv4(1, out_features=WAYS), inner_lr=inner_lr, inner_steps=1, eval_inner_steps=eval_inner_steps,
            first_order=pair == "fomaml", meta_lr=1e-3, execution="loop",
        )  # fmt: skip
        return learner, [learner.backbone]
    if pair == "meta_sgd":
        learner = MetaSGD(
            Conv4(1, out_features=WAYS), inner_lr=inner_lr, inner_steps=1, eval_inner_steps=eval_inner_steps,
            meta_lr=1e-3, execution="loop",
        )  # fmt: skip
        return learner, [learner.backbone, learner.inner_lrs]
    if pair == "protonet":
        learner = ProtoNet(Conv4(1, out_features=None), meta_lr=1e-3)
        return learner, [learner.backbone]
    if pair == "matching":
        temperature = float(os.environ.get("SIDE_BY_SIDE_MATCHING_TEMPERATURE", "1"))
        learner = MatchingNet(
            Conv4(1, out_features=None), fce=True, fce_steps=WAYS * SHOTS,
            temperature=temperature, learn_temperature=temperature != 1,
        )  # fmt: skip
        return learner, [learner.backbone, learner.support_lstm]
    learner = RelationNet(relation_embedding(), meta_lr=1e-3)
    return learner, [learner.backbone, learner.relation_module]


def lit_meta_side() -> None:
    from side_protocol import arguments, run_side

    from lit_meta.data.episode import EpisodeBatch

    args = arguments()
    learner, shared = build_learner(args.learner, args.inner_lr, args.eval_inner_steps)
    load_state(shared, args.workdir / "init.pt")

    def correct_of(batch):
        learner.eval()
        with torch.inference_mode():  # as Trainer.validate runs it
            outputs = learner.evaluate_outputs(EpisodeBatch(**batch))
        learner.train()
        return (outputs.argmax(-1) == batch["query_y"]).float().mean(-1)

    optimizer = learner.configure_optimizers()
    run_side(args, lambda b: learner.meta_loss(EpisodeBatch(**b)), optimizer, correct_of, shared, learner.backbone)


# -- one pair -------------------------------------------------------------------------------------
def run_pair(pair: str, args: argparse.Namespace, root: Path) -> dict:
    steps = args.steps.get(pair, DEFAULT_STEPS[pair])
    meta_batch = args.maml_meta_batch if pair in GRADIENT_PAIRS else 1
    inner_lr = args.inner_lr if args.inner_lr is not None else INNER_LR.get(pair, 0.4)
    workdir = root / pair
    workdir.mkdir(parents=True, exist_ok=True)
    write_datamodule_stream(workdir / "stream", omniglot_datamodule(args, meta_batch, steps))
    learner, shared = build_learner(pair, inner_lr, args.eval_inner_steps)
    save_state(shared, workdir / "init.pt")
    first = EpisodeStream(workdir / "stream").episodes("val", 0, 1)
    x = torch.from_numpy(np.concatenate([first["support_x"][0], first["query_x"][0]]))
    torch.save({"x": x, "out": outputs_in_eval_mode(learner.backbone, x)}, workdir / "check.pt")

    peer = PEERS[pair]
    peer_python = args.l2l_python if peer == "learn2learn" else args.easyfsl_python
    common = ["--workdir", str(workdir), "--learner", pair, "--steps", str(steps), "--eval-every",
              str(args.eval_every.get(pair, max(steps // 6, 1))), "--meta-batch", str(meta_batch),
              "--eval-inner-steps", str(args.eval_inner_steps), "--inner-lr", str(inner_lr)]  # fmt: skip
    commands = {
        "lit-meta": [sys.executable, __file__, "--side", *common, "--name", "lit-meta"],
        peer: [peer_python, str(HERE / "peers" / f"{peer}_side_by_side.py"), *common, "--name", peer],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    running = {side: subprocess.Popen(command, env=env) for side, command in commands.items()}
    for side, process in running.items():
        if process.wait() != 0:
            raise RuntimeError(f"{pair}: the {side} side failed (exit {process.returncode})")
    wall = time.perf_counter() - start
    results = {side: json.loads((workdir / f"{side}.json").read_text()) for side in commands}
    ours, theirs = (torch.load(workdir / f"{side}-grads.pt") for side in commands)
    gradient_diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    gradient_scale = max(float(a.abs().max()) for a in ours)
    aligned = workdir / f"{peer}-aligned-grads.pt"
    aligned_diff = None
    if aligned.exists():
        aligned_diff = max(float((a - b).abs().max()) for a, b in zip(ours, torch.load(aligned), strict=True))
    a, b = (results[side]["series"] for side in commands)
    agree = all(abs(p[1] - q[1]) <= (p[2] ** 2 + q[2] ** 2) ** 0.5 for p, q in zip(a, b, strict=True) if p[0] == q[0])
    figures = {
        "learner": LEARNER_NAMES[pair],
        "setting": f"omniglot {WAYS}w{SHOTS}s",
        "peer": peer,
        "peer_version": results[peer]["versions"].get(peer),
        "steps": steps,
        "eval_every": int(common[common.index("--eval-every") + 1]),
        "val_episodes": args.val_episodes,
        "meta_batch": meta_batch,
        "series": {side: results[side]["series"] for side in commands},
        "gradient_max_abs_diff": gradient_diff,
        "gradient_max_abs": gradient_scale,
        "gradient_max_abs_diff_aligned": aligned_diff,
        "first_loss": {side: results[side]["first_loss"] for side in commands},
        "agree": agree,
        "seconds": {side: round(results[side]["seconds"], 1) for side in commands},
        "wall_seconds": round(wall, 1),
        "note": NOTES[pair]
        + (f" lit-meta's temperature: {args.matching_temperature}" if pair == "matching" else "")
        + (" (learned, as lit-meta's configs)." if pair == "matching" and args.matching_temperature != 1 else ""),
    }
    if args.record:
        record_result("side_by_side", "curves", figures, budget={"steps": steps})
    return figures


def pair_option(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    if name not in PEERS or not value.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use PAIR=N with PAIR one of {', '.join(PEERS)}")
    return name, int(value)


def main() -> None:
    if sys.argv[1:2] == ["--side"]:
        del sys.argv[1]
        lit_meta_side()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--steps", nargs="*", type=pair_option, default=[], help="PAIR=N training steps")
    parser.add_argument("--eval-every", nargs="*", type=pair_option, default=[], help="PAIR=N (default steps/6)")
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--maml-meta-batch", type=int, default=4)
    parser.add_argument("--inner-lr", type=float, help="every gradient pair's (default: 0.4; Meta-SGD 0.1)")
    parser.add_argument("--eval-inner-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LIT_META_OMNIGLOT", HERE.parents[1] / "shared/data/omniglot"))
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lit-meta-omniglot-cache")
    parser.add_argument("--l2l-python", default=os.environ.get("LIT_META_L2L_PYTHON", "/work/peer/venv/bin/python-l2l"))
    parser.add_argument(
        "--easyfsl-python",
        default=os.environ.get("LIT_META_EASYFSL_PYTHON", "/work/peer/easyfsl-venv/bin/python-easyfsl"),
    )
    parser.add_argument("--workdir", type=Path, help="keep the streams and weights here (default: a temporary folder)")
    parser.add_argument(
        "--matching-temperature", type=float, default=1.0,
        help="lit-meta MatchingNet's temperature: 1 (the paper's, fixed) or the learned start of its configs (0.1)",
    )  # fmt: skip
    parser.add_argument("--no-record", dest="record", action="store_false")
    args = parser.parse_args()
    args.steps, args.eval_every = dict(args.steps), dict(args.eval_every)
    os.environ["SIDE_BY_SIDE_MATCHING_TEMPERATURE"] = str(args.matching_temperature)  # for the lit-meta side too
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        for pair in args.pairs:
            f = run_pair(pair, args, root)
            last = {side: series[-1] for side, series in f["series"].items()}
            print(
                f"{f['learner']} vs {f['peer']} {f['peer_version']}, {f['steps']} steps: "
                + "; ".join(f"{side} {acc:.2f} ± {ci:.2f}" for side, (_, acc, ci) in last.items())
                + f"; agree {f['agree']}; max |grad diff| {f['gradient_max_abs_diff']:.2e}"
                f" (aligned: {f['gradient_max_abs_diff_aligned']})"
                f" (max |grad| {f['gradient_max_abs']:.2e}); seconds {f['seconds']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
