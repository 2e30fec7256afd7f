"""learn2learn's side of ``benchmarks/protonet_step.py``; runs in the peer environment.

One Prototypical Networks training episode the way learn2learn's Lightning module
runs it: the body of ``LightningPrototypicalNetworks.meta_learn`` itself (learn2learn's
function, called unbound with a stand-in ``self`` holding ``features``, ``classifier``
and ``loss``: the peer env has no pytorch_lightning, so the module cannot be built).
It sorts the episode by label, embeds support and query in one call, picks the first
``shots`` examples of each class as the support, ``PrototypicalClassifier.fit_``
(class means through ``compute_prototypes``) and ``classifier(query)`` (minus the
squared Euclidean distance: its defaults, ``distance="euclidean"``, ``normalize=False``,
are what lit-meta's ``ProtoNet`` computes), cross-entropy (mean) on the query; then
backward and an Adam step. ``meta_learn`` also computes the query accuracy for logging
(an argmax over the logits; negligible next to the network).

The episode holds lit-meta's support and query examples. ``meta_learn`` sorts it by label
and takes the first ``shots`` examples of each class as the support; ``torch.sort`` on CPU
is not stable (a class's examples come out permuted), so the examples are handed over in
the order that this sort turns into class by class, support then query: after the sort
the support and query are exactly lit-meta's (checked before timing). The network is
lit-meta's Conv4 without head (4 x [conv3x3 64, BatchNorm, max-pool 2, ReLU], flatten:
a 64-d embedding of 28x28 images), as plain layers in lit-meta's parameter order,
loaded with the same initial weights. Imports torch, learn2learn and ``benchmarks/peak_rss.py``
(standard library only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch
from learn2learn.algorithms.lightning import LightningPrototypicalNetworks
from learn2learn.nn import PrototypicalClassifier
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared peak_rss helper
from peak_rss import current_rss_mb, peak_rss_mb


def conv4_embedding() -> nn.Module:
    blocks = []
    for in_channels in (1, 64, 64, 64):
        blocks.append(
            nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.MaxPool2d(2), nn.ReLU())
        )
    return nn.Sequential(*blocks, nn.Flatten())


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--steps", "--warmup", "--threads"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--one", required=True)
    args = parser.parse_args()
    config = json.loads(args.one)
    torch.set_num_threads(args.threads)

    episode = torch.load(args.workdir / f"episode-{config['setup_key']}.pt")
    ways, shots, queries = config["ways"], config["shots"], config["queries"]
    support_x, query_x = episode["support_x"][0], episode["query_x"][0]  # meta-batch of 1
    item = support_x.shape[1:]
    # Class by class, each class's support then its query: what meta_learn takes the first shots of.
    grouped = torch.cat([support_x.view(ways, shots, *item), query_x.view(ways, queries, *item)], dim=1)
    grouped = grouped.reshape(ways * (shots + queries), *item)
    labels = torch.arange(ways).repeat_interleave(shots + queries).unsqueeze(0)  # [1, N]: a loader batch of one task
    # meta_learn sorts by label, and torch.sort on CPU is not stable: hand the examples over in the
    # order its sort undoes, so that its support is lit-meta's support (the sort depends on the labels only).
    order = torch.sort(labels).indices.squeeze(0)
    data = torch.empty_like(grouped)
    data[order] = grouped
    data = data.unsqueeze(0)
    picked = data.squeeze(0)[torch.sort(labels).indices.squeeze(0)].view(ways, shots + queries, *item)
    if not (torch.equal(picked[:, :shots].reshape(-1, *item), support_x)
            and torch.equal(picked[:, shots:].reshape(-1, *item), query_x)):  # fmt: skip
        raise RuntimeError("learn2learn's sort did not give lit-meta's support and query: the episodes would differ")

    net = conv4_embedding()
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(args.workdir / "weights.pt"), strict=True):
            p.copy_(w)
    module = types.SimpleNamespace(features=net, classifier=PrototypicalClassifier(), loss=nn.CrossEntropyLoss())
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    start_rss = current_rss_mb()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss, _accuracy = LightningPrototypicalNetworks.meta_learn(module, (data, labels), step, ways, shots, queries)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = [p.grad.clone() for p in net.parameters()]
            torch.save({"loss": loss.item(), "grads": grads}, args.workdir / f"grads-{config['key']}.pt")
        optimizer.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times[args.warmup :], "peak_rss_mb": peak_rss_mb(), "start_rss_mb": start_rss}))


if __name__ == "__main__":
    main()
