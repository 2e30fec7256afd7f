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

__version__ = "0.1.0.dev0"

__all__ = [
    "DATASETS",
    "Episode",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodeShape",
    "EpisodicDataModule",
    "MetaDataset",
    "__version__",
    "build_dataset",
    "collate_episodes",
]
