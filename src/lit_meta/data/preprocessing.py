"""ImagePreprocessing: how a dataset turns an image file into the tensor a learner sees.

A learner is only as good as the match between its training images and the images
it later labels: the same channels, size, polarity (bright ink on black, or dark on
white) and value scale. Image datasets describe their decoding with an
:class:`ImagePreprocessing`; the :class:`~lit_meta.data.EpisodicDataModule` stores it
in every checkpoint, so ``lit-meta adapt`` reads new images exactly as training did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    :class:`~lit_meta.data.datasets.ClassIndexedDataset` of the same images loads.

    Args:
        mode: ``"L"`` (one channel) or ``"RGB"`` (three).
        size: ``(height, width)`` of the tensor.
        invert: store ``255 - pixel``, as Omniglot does to turn its black-on-white
            files into bright ink on a zero background.
        custom_transform: description of a user ``transform`` the training data went
            through. Transforms are arbitrary code and are not stored, so calling
            this does not apply it; it is recorded so that ``lit-meta adapt`` can warn.
    """

    mode: ImageMode
    size: tuple[int, int]
    invert: bool = False
    custom_transform: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("L", "RGB"):
            raise DatasetError(f"image mode must be 'L' or 'RGB', got {self.mode!r}")
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
            raise DatasetError(f"image size must be (height, width) of positive ints, got {self.size!r}")
        object.__setattr__(self, "size", size)  # lists (from a checkpoint) and ints become a (height, width) tuple

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
        return torch.div(image, 255.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (``str``, ``list``, ``bool``), so checkpoints stay loadable with ``weights_only=True``."""
        return {
            "mode": self.mode,
            "size": list(self.size),
            "invert": self.invert,
            "custom_transform": self.custom_transform,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        """The inverse of :meth:`to_dict`.

        Raises:
            DatasetError: ``mode`` or ``size`` is missing or invalid.
        """
        missing = [key for key in ("mode", "size") if key not in data]
        if missing:
            raise DatasetError(
                f"image preprocessing {dict(data)!r} lacks {', '.join(missing)}; expected the keys of "
                "ImagePreprocessing.to_dict(): mode, size, invert, custom_transform"
            )
        return cls(
            mode=data["mode"],
            size=data["size"],
            invert=bool(data.get("invert", False)),
            custom_transform=data.get("custom_transform"),
        )


def describe_transform(transform: Callable[..., Any] | None) -> str | None:
    """How :attr:`ImagePreprocessing.custom_transform` names a dataset's user transform (``None`` for none)."""
    if transform is None:
        return None
    return getattr(transform, "__qualname__", None) or repr(transform)
