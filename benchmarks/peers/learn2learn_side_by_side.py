"""learn2learn's side of ``benchmarks/side_by_side.py`` (MAML, first-order MAML, Meta-SGD), in the peer environment.

The loop of learn2learn's Omniglot example (``examples/vision/maml_omniglot.py``): per task
``learner = maml.clone()``, ``learner.adapt(support loss)`` (1 step in training),
``query_loss.backward()``; the gradients are divided by the tasks of the meta-batch and Adam
(1e-3) steps. Meta-SGD runs the same loop around ``l2l.algorithms.MetaSGD`` (a learned rate per
weight, all starting at ``--inner-lr``), whose rates Adam trains with the network. Evaluation
adapts a clone for ``--eval-inner-steps`` steps on the support set and labels the query set,
with the network in training mode as the example leaves it (BatchNorm on each set's batch
statistics, as lit-meta's MAML). The network is lit-meta's Conv4 (``peers/networks.py``) with
lit-meta's initial weights. Imports torch, learn2learn and helpers from ``benchmarks/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import learn2learn as l2l
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from networks import conv4, load_state
from side_protocol import arguments, run_side


def main() -> None:
    args = arguments()
    net = conv4(out_features=5)
    if args.learner == "meta_sgd":
        maml = l2l.algorithms.MetaSGD(net, lr=args.inner_lr)
        shared = [net, maml.lrs]
    else:
        maml = l2l.algorithms.MAML(net, lr=args.inner_lr, first_order=args.learner == "fomaml")
        shared = [net]

    def loss_of(batch):
        tasks = len(batch["support_x"])
        total = 0.0
        for t in range(tasks):
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(batch["support_x"][t]), batch["support_y"][t]))
            loss = F.cross_entropy(learner(batch["query_x"][t]), batch["query_y"][t])
            loss.backward()  # per task, as the example does
            total += loss.detach() / tasks
        for p in maml.parameters():
            p.grad.mul_(1.0 / tasks)
        return total.requires_grad_()  # a leaf: run_side's backward of it reaches no parameter

    def correct_of(batch):
        correct = []
        for t in range(len(batch["support_x"])):
            learner = maml.clone()
            for _ in range(args.eval_inner_steps):
                learner.adapt(F.cross_entropy(learner(batch["support_x"][t]), batch["support_y"][t]))
            with torch.no_grad():
                correct.append((learner(batch["query_x"][t]).argmax(-1) == batch["query_y"][t]).float().mean())
        return torch.stack(correct)

    load_state(shared, args.workdir / "init.pt")
    run_side(args, loss_of, torch.optim.Adam(maml.parameters(), lr=1e-3), correct_of, shared, net)


if __name__ == "__main__":
    main()
