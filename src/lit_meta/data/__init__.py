"""The episodic data layer: datasets, episodes, the episode sampler and the datamodule."""

from lit_meta.data.affine import AffineDistortion
from lit_meta.data.augmentation import EpisodeAugmentation
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import Episode, EpisodeBatch, EpisodeDataset, collate_episodes
from lit_meta.data.sampler import EpisodePlan, EpisodeSampler, EpisodeShape

__all__ = [
    "AffineDistortion",
    "Episode",
    "EpisodeAugmentation",
    "EpisodeBatch",
    "EpisodeDataset",
    "EpisodePlan",
    "EpisodeSampler",
    "EpisodeShape",
    "EpisodicDataModule",
    "collate_episodes",
]
