"""learn2learn's side of ``benchmarks/maml_evaluation.py``; runs in the peer environment.

Evaluates the way learn2learn's Omniglot example (``examples/vision/maml_omniglot.py``)
adapts at test time: per episode ``learner = maml.clone()``, ``learner.adapt(loss)``
``--steps`` times on the support set, then ``learner(query_x)``; the predictions are the
argmax. Same Conv4 and weights as lit-meta's (``learn2learn_maml.conv4``). Imports torch,
learn2learn and the standard-library helper ``benchmarks/peak_rss.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import learn2learn as l2l
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared peak_rss helper
from learn2learn_maml import conv4

from peak_rss import peak_rss_since_reset_mb, reset_peak_rss


def main() -> None:
    reset_peak_rss()  # this process inherited its parent's peak RSS
    parser = argparse.ArgumentParser()
    for name, kind in (("--steps", int), ("--threads", int), ("--inner-lr", float), ("--tasks", int)):
        parser.add_argument(name, type=kind, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    episodes = torch.load(args.workdir / "episodes.pt")
    net = conv4(ways=5)
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(args.workdir / "weights.pt"), strict=True):
            p.copy_(w)
    maml = l2l.algorithms.MAML(net, lr=args.inner_lr, first_order=False)

    def predict(t: int) -> torch.Tensor:
        learner = maml.clone()
        for _ in range(args.steps):
            learner.adapt(F.cross_entropy(learner(episodes["support_x"][t]), episodes["support_y"][t]))
        with torch.no_grad():
            return learner(episodes["query_x"][t]).argmax(-1)

    start = time.perf_counter()
    predict(0)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    predictions = torch.stack([predict(t) for t in range(len(episodes["support_x"]))])
    seconds = time.perf_counter() - start
    torch.save(predictions, args.workdir / "predictions-learn2learn.pt")
    print(json.dumps({"seconds": seconds, "warm_up_s": warm_up, "peak_rss_mb": peak_rss_since_reset_mb()}))


if __name__ == "__main__":
    main()
