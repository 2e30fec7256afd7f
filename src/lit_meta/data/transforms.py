"""Image decoding with Pillow into ``uint8`` tensors, with errors that name the file.

Datasets decode once (into memory or a cache) and hand ``[C, H, W]`` tensors to the
episode layer, so these helpers stay plain functions of a file or its bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_meta.errors import DatasetError

ImageMode = Literal["L", "RGB"]
ImageSize = tuple[int, int] | int | None
CropBox = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in pixels of the decoded image."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
"""File name endings (lower case) read as images."""

# What Pillow raises for a file it cannot identify (UnidentifiedImageError is an OSError),
# a truncated stream (OSError), a malformed chunk (SyntaxError, ValueError, EOFError) or an
# implausibly large header (DecompressionBombError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _size_hw(size: ImageSize) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise DatasetError(f"image size must be positive, got {size!r}")
    return int(height), int(width)


def decode_image(
    data: bytes,
    mode: ImageMode = "RGB",
    size: ImageSize = None,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
    *,
    name: str = "<bytes>",
    box: CropBox | None = None,
) -> Tensor:
    """Decode an encoded image (PNG, JPEG, ...) into a ``uint8`` tensor ``[C, H, W]``.

    Args:
        data: the encoded file contents, e.g. a zip member.
        mode: ``"L"`` (one channel) or ``"RGB"`` (three); other modes are converted.
        size: ``(height, width)``, or one int for a square, or ``None`` to keep the size.
        resample: Pillow resampling filter used when resizing.
        name: how errors refer to the image (a path or ``archive::member``).
        box: crop to this region (rounded to whole pixels, clipped to the image) before resizing.

    Raises:
        DatasetError: empty data, data Pillow cannot decode, or a ``box`` outside the image, naming ``name``.
    """
    if not data:
        raise DatasetError(f"image file {name} is empty (0 bytes); replace or delete it")
    hw = _size_hw(size)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert(mode)
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"cannot decode image {name}: {exc}; replace or delete the file") from exc
    if box is not None:
        converted = converted.crop(_clipped(box, converted.size, name))
    if hw is not None and converted.size != (hw[1], hw[0]):
        converted = converted.resize((hw[1], hw[0]), resample)
    array = np.array(converted, dtype=np.uint8)
    if array.ndim == 2:
        return torch.from_numpy(array).unsqueeze(0)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image(
    path: str | Path,
    mode: ImageMode = "RGB",
    size: ImageSize = None,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
    box: CropBox | None = None,
) -> Tensor:
    """Read an image file into a ``uint8`` tensor ``[C, H, W]``; see :func:`decode_image`.

    Raises:
        DatasetError: the file is missing, empty (0 bytes), unreadable or truncated.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image file {path}: {exc}") from exc
    return decode_image(data, mode, size, resample, name=str(path), box=box)


def _clipped(box: CropBox, image_size: tuple[int, int], name: str) -> tuple[int, int, int, int]:
    """``box`` rounded to whole pixels and clipped to an image of ``(width, height)``.

    Raises:
        DatasetError: nothing of the box lies inside the image.
    """
    width, height = image_size
    left, top = max(round(box[0]), 0), max(round(box[1]), 0)
    right, bottom = min(round(box[2]), width), min(round(box[3]), height)
    if right <= left or bottom <= top:
        raise DatasetError(f"crop box {box} lies outside the {width}x{height} image {name}")
    return left, top, right, bottom


def resize_array(
    image: np.ndarray, size: ImageSize, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """Resize a ``uint8`` ``[H, W]`` or ``[H, W, C]`` array with Pillow; unchanged if already ``size``.

    For datasets distributed as decoded arrays, so they are resized like decoded files.
    """
    hw = _size_hw(size)
    if hw is None or image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), resample), dtype=np.uint8)


def invert(image: Tensor) -> Tensor:
    """``255 - image`` for ``uint8`` images: swaps dark-on-light and light-on-dark."""
    return 255 - image
