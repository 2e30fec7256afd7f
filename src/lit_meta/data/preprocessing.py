"""ImagePreprocessing: how a dataset turns an image file into the tensor a learner sees.

A learner is only as good as the match between its training images and the images
it later labels: the same channels, size, polarity (bright ink on black, or dark on
white) and value scale. Image datasets describe their decoding with an
:class:`ImagePreprocessing`; the :class:`~lit_meta.data.EpisodicDataModule` stores it
in every checkpoint, so ``lit-meta adapt`` reads new images exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_meta.data.transforms import ImageMode, invert, load_image
from lit_meta.errors import DatasetError


@dataclass(frozen=True)
class ImagePreprocessing:
    """Decoding of an image file into a float ``[C, H, W]`` tensor in ``[0, 1]``.

    Calling it reads the file with :func:`~lit_meta.data.transforms.load_image`
    (converted to ``mode``, resized to ``size`` with Lanczos), inverts it when
    ``invert`` is set and divides by 255: the values a
    :class:`~lit_meta.data.datasets.ClassIndexedDataset` of the same images loads;
    then, when ``mean`` and ``std`` are set, normalises each channel as
    :func:`normalize` (the datamodule's ``normalize=True``).

    Args:
        mode: ``"L"`` (one channel) or ``"RGB"`` (three).
        size: ``(height, width)`` of the tensor.
        invert: store ``255 - pixel``, as Omniglot does to turn its black-on-white
            files into bright ink on a zero background.
        custom_transform: description of a user ``transform`` the training data went
            through. Transforms are arbitrary code and are not stored, so calling
            this does not apply it; it is recorded so that ``lit-meta adapt`` can warn.
        mean: per-channel mean subtracted after the division by 255 (one value per
            channel), or ``None`` for no normalisation. Given together with ``std``.
        std: per-channel standard deviation divided by, after ``mean``.
    """

    mode: ImageMode
    size: tuple[int, int]
    invert: bool = False
    custom_transform: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise DatasetError(f"image mode must be 'L' or 'RGB', got {self.mode!r}")
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
            raise DatasetError(f"image size must be (height, width) of positive ints, got {self.size!r}")
        object.__setattr__(self, "size", size)  # lists (from a checkpoint) and ints become a (height, width) tuple
        statistics = check_normalization(self.mean, self.std, self.channels, f"{self.mode} images")
        if statistics is not None:  # lists (from a checkpoint) become tuples of floats
            object.__setattr__(self, "mean", statistics[0])
            object.__setattr__(self, "std", statistics[1])

    @property
    def channels(self) -> int:
        """1 for ``"L"``, 3 for ``"RGB"``."""
        return 1 if self.mode == "L" else 3

    def __call__(self, path: str | Path) -> Tensor:
        """The image at ``path`` as a float ``[C, H, W]`` tensor in ``[0, 1]``.

        Raises:
            DatasetError: the file is missing, empty or not a readable image, naming it.
        """
        image = load_image(path, self.mode, self.size)
        if self.invert:
            image = invert(image)
        image = torch.div(image, 255.0)
        if self.mean is None or self.std is None:
            return image
        return normalize(image, self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (``str``, ``list``, ``bool``), so checkpoints stay loadable with ``weights_only=True``.

        ``mean`` and ``std`` appear only when set: without them the entry is the one older versions wrote.
        """
        data: dict[str, Any] = {
            "mode": self.mode,
            "size": list(self.size),
            "invert": self.invert,
            "custom_transform": self.custom_transform,
        }
        if self.mean is not None and self.std is not None:
            data.update(mean=list(self.mean), std=list(self.std))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        """The inverse of :meth:`to_dict`; entries of older checkpoints without ``mean`` and ``std`` mean none.

        Raises:
            DatasetError: ``mode`` or ``size`` is missing or invalid.
        """
        missing = [key for key in ("mode", "size") if key not in data]
        if missing:
            raise DatasetError(
                f"image preprocessing {dict(data)!r} lacks {', '.join(missing)}; expected the keys of "
                "ImagePreprocessing.to_dict(): mode, size, invert, custom_transform, mean, std"
            )
        return cls(
            mode=data["mode"],
            size=data["size"],
            invert=bool(data.get("invert", False)),
            custom_transform=data.get("custom_transform"),
            mean=data.get("mean"),
            std=data.get("std"),
        )


Statistics = tuple[tuple[float, ...], tuple[float, ...]]
"""Per-channel ``(mean, std)`` of a dataset's images in ``[0, 1]``."""


def check_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int | None, owner: str
) -> Statistics | None:
    """``(mean, std)`` as tuples of floats, or ``None`` when both are ``None``.

    Args:
        channels: the number of channels they must each list, or ``None`` if unknown.
        owner: what the statistics belong to, for the error message (``"RGB images"``,
            ``"dataset 'image_folder'"``).

    Raises:
        DatasetError: only one of them is given, or their lengths differ from ``channels``
            or from each other, or a value is not finite, or a ``std`` is not positive.
    """
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise DatasetError(f"{owner}: {given} is given without {missing}; give both (one value per channel) or neither")
    statistics = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    expected = len(statistics[0]) if channels is None else channels
    for name, values in zip(("mean", "std"), statistics, strict=True):
        if len(values) != expected or not values:
            channels_known = f" ({channels})" if channels is not None else ", as many in mean as in std"
            raise DatasetError(
                f"{owner}: {name}={list(values)} lists {len(values)} values; give one per channel{channels_known}"
            )
        if not all(map(math.isfinite, values)) or (name == "std" and min(values) <= 0):
            raise DatasetError(f"{owner}: {name}={list(values)}; every value must be finite, and every std positive")
    return statistics


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(images - mean) / std`` per channel; ``images`` is ``[..., C, H, W]``."""
    mean_t = torch.tensor(mean, dtype=images.dtype)[:, None, None]
    std_t = torch.tensor(std, dtype=images.dtype)[:, None, None]
    return (images - mean_t) / std_t


def describe_transform(transform: Callable[..., Any] | None) -> str | None:
    """How :attr:`ImagePreprocessing.custom_transform` names a dataset's user transform (``None`` for none)."""
    if transform is None:
        return None
    return getattr(transform, "__qualname__", None) or repr(transform)
