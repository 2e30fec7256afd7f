"""lit-meta: meta-learning and few-shot learning for PyTorch Lightning.

The public names are imported on first use, so ``import lit_meta.functional`` (the
inner-loop maths) or ``lit_meta.backbones`` does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_PUBLIC = {
    "Episode": "lit_meta.data",
    "EpisodeAugmentation": "lit_meta.data",
    "EpisodeBatch": "lit_meta.data",
    "EpisodeDataset": "lit_meta.data",
    "EpisodePlan": "lit_meta.data",
    "EpisodeSampler": "lit_meta.data",
    "EpisodeShape": "lit_meta.data",
    "EpisodicDataModule": "lit_meta.data",
    "collate_episodes": "lit_meta.data",
    "DATASETS": "lit_meta.data.datasets",
    "MetaDataset": "lit_meta.data.datasets",
    "build_dataset": "lit_meta.data.datasets",
    "enable_adaptation_grad": "lit_meta.functional",
    "ANIL": "lit_meta.learners",
    "MetaLSTM": "lit_meta.learners",
    "LEO": "lit_meta.learners",
    "BaselinePlusPlus": "lit_meta.learners",
    "Baseline": "lit_meta.learners",
    "GradientMetaLearner": "lit_meta.learners",
    "MetricMetaLearner": "lit_meta.learners",
    "MAML": "lit_meta.learners",
    "MANN": "lit_meta.learners",
    "MatchingNet": "lit_meta.learners",
    "MetaLearner": "lit_meta.learners",
    "MetaNet": "lit_meta.learners",
    "MetaSGD": "lit_meta.learners",
    "ProtoNet": "lit_meta.learners",
    "RelationNet": "lit_meta.learners",
    "Reptile": "lit_meta.learners",
    "SequenceMetaLearner": "lit_meta.learners",
    "SiameseNet": "lit_meta.learners",
    "SNAIL": "lit_meta.learners",
}

__all__ = [
    "ANIL",
    "DATASETS",
    "LEO",
    "MAML",
    "MANN",
    "SNAIL",
    "Baseline",
    "BaselinePlusPlus",
    "Episode",
    "EpisodeAugmentation",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodeShape",
    "EpisodicDataModule",
    "GradientMetaLearner",
    "MatchingNet",
    "MetaDataset",
    "MetaLSTM",
    "MetaLearner",
    "MetaNet",
    "MetaSGD",
    "MetricMetaLearner",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SequenceMetaLearner",
    "SiameseNet",
    "__version__",
    "build_dataset",
    "collate_episodes",
    "enable_adaptation_grad",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lit_meta' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:
    from lit_meta.data import (
        Episode,
        EpisodeAugmentation,
        EpisodeBatch,
        EpisodeDataset,
        EpisodePlan,
        EpisodeSampler,
        EpisodeShape,
        EpisodicDataModule,
        collate_episodes,
    )
    from lit_meta.data.datasets import DATASETS, MetaDataset, build_dataset
    from lit_meta.functional import enable_adaptation_grad
    from lit_meta.learners import (
        ANIL,
        LEO,
        MAML,
        MANN,
        SNAIL,
        Baseline,
        BaselinePlusPlus,
        GradientMetaLearner,
        MatchingNet,
        MetaLearner,
        MetaLSTM,
        MetaNet,
        MetaSGD,
        MetricMetaLearner,
        ProtoNet,
        RelationNet,
        Reptile,
        SequenceMetaLearner,
        SiameseNet,
    )
