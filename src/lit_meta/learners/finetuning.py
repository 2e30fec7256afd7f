"""Fitting a new classifier head on the frozen features of a support set.

The evaluation of the fine-tuning baselines of Chen, Liu, Kira, Wang & Huang (2019, "A
Closer Look at Few-shot Classification", ICLR, arXiv:1904.04232, Section 3.1 "fine-tuning
stage"): the feature extractor stays fixed, the support features are computed once, and a
new classifier is trained on them from scratch by minimising the cross-entropy; a query is
then labelled by ``head(features(query))``. :func:`fit_head` is that training loop, with the
authors' settings as :class:`HeadFitting`'s defaults, and :class:`FineTunedClassifier` the
resulting task model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadFitting:
    """How a new head is fitted on a support set: SGD on mini-batches drawn without replacement.

    The defaults are those of the authors' code (``methods/baselinefinetune.py`` of
    wyharveychen/CloserLookFewShot), which the paper summarises as "100 iterations with a
    batch size of 4" (Section 4.1): 100 passes over the support set in a fresh random
    order, so 200 steps for 5-way 1-shot and 700 for 5-way 5-shot.

    Attributes:
        epochs: passes over the support set.
        batch_size: support examples per step (the last step of a pass takes the rest).
        lr: SGD learning rate.
        momentum: SGD momentum.
        dampening: SGD dampening of the momentum.
        weight_decay: SGD weight decay (L2) of the head's parameters.
    """

    epochs: int = 100
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"finetune_epochs={self.epochs}, finetune_batch_size={self.batch_size}, finetune_lr={self.lr}: "
                "fitting a head takes at least one pass of batches of at least one example at a positive rate"
            )
        if self.momentum < 0 or not 0 <= self.dampening <= 1 or self.weight_decay < 0:
            raise ValueError(
                f"finetune_momentum={self.momentum}, finetune_dampening={self.dampening}, "
                f"finetune_weight_decay={self.weight_decay}: use momentum >= 0, dampening in [0, 1], "
                "weight decay >= 0"
            )


def fit_head(
    head: nn.Module, features: Tensor, labels: Tensor, fitting: HeadFitting, generator: torch.Generator
) -> None:
    """Trains ``head`` in place on ``(features, labels)`` by mini-batch SGD on the cross-entropy.

    The order of each pass is drawn from ``generator`` (a CPU generator), never from the
    global random state, so the fit is a function of its inputs. Autograd is enabled
    here, so the head is fitted even when called under ``torch.no_grad``; ``features``
    must not require gradients (nothing flows back into the network that made them).

    Args:
        head: the classifier, ``[examples, D] -> [examples, ways]``, on the features' device.
        features: ``[examples, D]`` support features.
        labels: ``[examples]`` labels ``0 .. ways-1``.
        fitting: the optimisation settings.
        generator: draws the order of the examples in every pass.
    """
    optimizer = torch.optim.SGD(
        head.parameters(),
        lr=fitting.lr,
        momentum=fitting.momentum,
        dampening=fitting.dampening,
        weight_decay=fitting.weight_decay,
    )
    examples = len(labels)
    # All passes' orders at once: one host-to-device copy instead of one per pass.
    orders = torch.stack([torch.randperm(examples, generator=generator) for _ in range(fitting.epochs)])
    with torch.enable_grad():
        for order in orders.to(features.device):
            for batch in order.split(fitting.batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(head(features[batch]), labels[batch]).backward()
                optimizer.step()


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and its submodules in evaluation mode (BatchNorm on its running statistics, which
    it then leaves alone), each given back the mode it had."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class FineTunedClassifier:
    """The task model of a fine-tuning baseline: ``head(features(x))`` without gradients.

    Args:
        features: items -> ``[items, D]`` features of the frozen network (the learner's).
        head: the classifier fitted on the support features.
    """

    def __init__(self, features: Callable[[Tensor], Tensor], head: nn.Module) -> None:
        self.features = features
        self.head = head

    def __call__(self, query_x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.head(self.features(query_x))
