"""lit-meta: meta-learning and few-shot learning for PyTorch Lightning."""

from lit_meta.data import (
    Episode,
    EpisodeBatch,
    EpisodeDataset,
    EpisodePlan,
    EpisodeSampler,
    EpisodeShape,
    EpisodicDataModule,
    collate_episodes,
)
from lit_meta.data.datasets import DATASETS, MetaDataset, build_dataset
from lit_meta.learners import ANIL, MAML, MatchingNet, MetaLearner, MetaSGD, ProtoNet, RelationNet, Reptile, SiameseNet

__version__ = "0.1.0.dev0"

__all__ = [
    "ANIL",
    "DATASETS",
    "MAML",
    "Episode",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodeShape",
    "EpisodicDataModule",
    "MatchingNet",
    "MetaDataset",
    "MetaLearner",
    "MetaSGD",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SiameseNet",
    "__version__",
    "build_dataset",
    "collate_episodes",
]
