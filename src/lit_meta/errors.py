"""Exceptions raised at lit-meta's boundaries.

Each names the offending value and the fix, so a bad configuration fails before
any training starts.
"""

from __future__ import annotations

import pickle


class LitMetaError(Exception):
    """Base class of every error lit-meta raises on purpose."""


class EpisodeConfigError(LitMetaError, ValueError):
    """An episode shape (ways, shots, queries) that a split cannot provide."""


class AugmentationError(EpisodeConfigError):
    """A train-time augmentation setting outside its range, or images it cannot augment."""


class DatasetError(LitMetaError, ValueError):
    """Missing, empty, unreadable or unknown data."""


class ChecksumError(DatasetError):
    """A downloaded file whose hash differs from the expected one."""


class DownloadedPageError(DatasetError):
    """A web page (a quota, sign-in or virus-scan page) received where a data file was expected."""


class UnsafeArchiveError(DatasetError):
    """An archive member that would be written outside the extraction folder."""


class NonFiniteLossError(LitMetaError, FloatingPointError):
    """A loss that became NaN or infinite: of the inner loop, the meta-training objective or an evaluation.

    The message names the global step, the stage and the likeliest cause: non-finite input data,
    or divergence (a learning rate too high for the network).
    """


class NonFiniteGradientError(LitMetaError, FloatingPointError):
    """A meta-gradient that became NaN or infinite while the meta-loss was finite (divergence)."""


class CheckpointError(LitMetaError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the learner it is loaded into
    (another learner class, another architecture)."""


class CheckpointGlobalsError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint that refers to Python objects by name (pickled) that cannot be loaded:
    ``weights_only=True`` refuses them, or they cannot be imported here."""


class TransformError(LitMetaError, ValueError):
    """A dataset transform that a checkpoint cannot name (a lambda, a local function, an object),
    or an import path that names no callable."""


class ConfigError(LitMetaError, ValueError):
    """A value of the ``lit-meta`` command line or its config file that a constructor refused.

    The message starts with the value's config key when it is known (``data.ways=0: ...``).
    """
