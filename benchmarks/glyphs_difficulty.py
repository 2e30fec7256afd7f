"""How hard are the procedural glyphs? Chance, raw-pixel matching and a briefly trained ProtoNet.

Prints the generation time (cold, into an empty cache directory) and the cached
load time, then 5-way 1-shot and 5-way 5-shot accuracy (15 queries per class,
mean ± 95% CI over 600 meta-test episodes) of:

- chance;
- raw pixels: 1-nearest-neighbour and nearest class mean, Euclidean and cosine;
- a Conv4 prototypical network (Snell et al., 2017) trained on meta-train
  episodes for a few CPU minutes.

The dataset is learnable but not pixel-matchable when the trained network
clearly beats every pixel baseline. Takes about 5 CPU minutes, most of it
training (600 episodes of 20-way 5-shot, ~0.4 s CPU each on one thread)::

    python benchmarks/glyphs_difficulty.py

Measured (1 thread, on 2 shared cores): generation 1.7 s, cached load 0.006 s;
5w1s / 5w5s: chance 20.1 / 20.1, pixel 1-NN Euclidean 39.5 / 65.4, pixel
class mean Euclidean 39.5 / 55.5, ProtoNet 92.3 ± 0.5 / 98.1 ± 0.2.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from lit_meta.data.datasets.base import ClassIndexedDataset
from lit_meta.data.datasets.glyphs import ProceduralGlyphs
from lit_meta.data.episode import Episode, EpisodeDataset
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape

Classifier = Callable[[Episode], Tensor]
"""Maps an episode to the predicted labels of its queries."""


def episodes(source: ClassIndexedDataset, shape: EpisodeShape, count: int, split: str, seed: int) -> Iterator[Episode]:
    sampler = EpisodeSampler(source, shape, count, split=split, seed=seed)  # type: ignore[arg-type]
    loader = EpisodeDataset(source)
    return (loader[plan] for plan in sampler)


def mean_ci(accuracies: list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width, in percent."""
    values = np.asarray(accuracies) * 100
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def class_means(x: Tensor, y: Tensor, ways: int) -> Tensor:
    return torch.stack([x[y == c].mean(0) for c in range(ways)])


def chance(episode: Episode) -> Tensor:
    generator = torch.Generator().manual_seed(int(episode.classes.sum()))
    return torch.randint(episode.ways, episode.query_y.shape, generator=generator)


def pixel_classifier(metric: str, prototype: bool) -> Classifier:
    """Raw-pixel 1-nearest-neighbour (``prototype=False``) or nearest class mean."""

    def classify(episode: Episode) -> Tensor:
        support = episode.support_x.flatten(1)
        query = episode.query_x.flatten(1)
        if prototype:
            support, labels = class_means(support, episode.support_y, episode.ways), torch.arange(episode.ways)
        else:
            labels = episode.support_y
        if metric == "cosine":
            score = nn.functional.normalize(query, dim=1) @ nn.functional.normalize(support, dim=1).T
        else:
            score = -torch.cdist(query, support)
        return labels[score.argmax(1)]

    return classify


def conv4(hidden: int = 64) -> nn.Sequential:
    """Four blocks of 3x3 convolution, BatchNorm, ReLU and 2x2 max-pooling (Vinyals et al., 2016)."""
    blocks: list[nn.Module] = []
    for i in range(4):
        blocks += [
            nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*blocks, nn.Flatten())


def proto_logits(net: nn.Module, episode: Episode) -> Tensor:
    """Negative squared Euclidean distances from query embeddings to class-mean embeddings."""
    embedded = net(torch.cat([episode.support_x, episode.query_x]))
    support, query = embedded[: len(episode.support_x)], embedded[len(episode.support_x) :]
    return -(torch.cdist(query, class_means(support, episode.support_y, episode.ways)) ** 2)


def train_protonet(
    source: ClassIndexedDataset, shape: EpisodeShape, steps: int, seed: int = 0, log_every: int = 0
) -> nn.Module:
    """Prototypical network training (Snell et al., 2017) with Adam, halving the learning rate twice."""
    torch.manual_seed(seed)
    net = conv4()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps // 2, 3 * steps // 4], gamma=0.5)
    net.train()
    for step, episode in enumerate(episodes(source, shape, steps, "train", seed)):
        loss = nn.functional.cross_entropy(proto_logits(net, episode), episode.query_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    return net.eval()


def protonet_classifier(net: nn.Module) -> Classifier:
    def classify(episode: Episode) -> Tensor:
        with torch.inference_mode():
            return proto_logits(net, episode).argmax(1)

    return classify


def evaluate(classify: Classifier, source: ClassIndexedDataset, shape: EpisodeShape, count: int) -> tuple[float, float]:
    """Mean ± 95% CI accuracy (percent) over ``count`` meta-test episodes."""
    accuracies = [
        (classify(episode) == episode.query_y).float().mean().item()
        for episode in episodes(source, shape, count, "test", seed=1)
    ]
    return mean_ci(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=600, help="meta-test episodes per setting")
    parser.add_argument("--train-steps", type=int, default=600, help="ProtoNet training episodes")
    parser.add_argument("--train-ways", type=int, default=20)
    parser.add_argument("--train-queries", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        family = ProceduralGlyphs(root=root)
        family.prepare()
        generated = time.perf_counter() - start
        start = time.perf_counter()
        family = ProceduralGlyphs(root=root)
        family.split("train")
        loaded = time.perf_counter() - start
    print(f"generation (cold, {family.num_classes} classes x {family.drawings_per_class}): {generated:.2f} s")
    print(f"cached load: {loaded:.3f} s")
    train, test = family.split("train"), family.split("test")
    print(f"classes: train {train.num_classes}, test {test.num_classes}")

    start, cpu = time.perf_counter(), time.process_time()
    train_shape = EpisodeShape(args.train_ways, 5, args.train_queries)
    print(f"training ProtoNet: {args.train_steps} episodes of {train_shape}", flush=True)
    net = train_protonet(train, train_shape, args.train_steps, log_every=max(args.train_steps // 5, 1))
    print(f"ProtoNet training time: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU")

    classifiers: dict[str, Classifier] = {
        "chance": chance,
        "pixel 1-NN, Euclidean": pixel_classifier("euclidean", prototype=False),
        "pixel 1-NN, cosine": pixel_classifier("cosine", prototype=False),
        "pixel class mean, Euclidean": pixel_classifier("euclidean", prototype=True),
        "pixel class mean, cosine": pixel_classifier("cosine", prototype=True),
        "ProtoNet Conv4": protonet_classifier(net),
    }
    settings = {"5w1s": EpisodeShape(5, 1, 15), "5w5s": EpisodeShape(5, 5, 15)}
    print(f"\naccuracy %, mean ± 95% CI over {args.episodes} meta-test episodes (15 queries per class)")
    print(f"{'method':<30}" + "".join(f"{name:>16}" for name in settings))
    for method, classify in classifiers.items():
        cells = []
        for shape in settings.values():
            mean, ci = evaluate(classify, test, shape, args.episodes)
            cells.append(f"{mean:6.1f} ± {ci:4.1f}")
        print(f"{method:<30}" + "".join(f"{cell:>16}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
