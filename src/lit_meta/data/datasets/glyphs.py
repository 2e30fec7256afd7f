"""Procedural glyphs: an embedded, download-free, Omniglot-like few-shot image dataset.

Every class is a random character made of a few pen strokes; every drawing of
it is that character redrawn by an unsteady hand: the stroke control points
wobble, the whole glyph is rotated, stretched, sheared and shifted, the pen is
thicker or thinner and stroke ends are sometimes cut short. The jitter is
strong enough that matching raw pixels recognises a class poorly, while a
small convolutional network learns the stroke structure that identifies it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lit_meta.data.atomic_file import atomic_file
from lit_meta.data.datasets.base import (
    SPLIT_NAMES,
    ClassIndexedDataset,
    MetaDataset,
    RotatedClasses,
    SplitName,
    TensorClassDataset,
    Transform,
    split_classes_by_fraction,
)
from lit_meta.data.preprocessing import ImagePreprocessing, describe_transform
from lit_meta.errors import DatasetError

FORMAT_VERSION = 1
"""Bump whenever the generator's output changes, so stale cache files are not reused."""

# -- characters (per class) ----------------------------------------------------------------------
_STROKES_PER_CLASS = (2, 3, 4)
_STROKES_PROBS = (0.3, 0.4, 0.3)
_STROKE_LENGTH = (0.7, 1.8)  # chord length in canonical units; the glyph box is [-1, 1]^2
_BEND = 0.45  # std of the middle control point's offset across the chord, relative to its length
_CONNECT_PROB = 0.5  # a stroke starts where an earlier stroke starts or ends
_ANGULAR_PROB = 0.4  # a stroke is a two-segment polyline (a corner) instead of a quadratic Bezier

# -- drawings (per item) ---------------------------------------------------------------------------
_POINT_JITTER = 0.10  # std of control-point noise, canonical units
_ROTATION_DEG = 12.0  # std of the rotation
_LOG_SCALE = 0.10  # std of the log of each axis' scale
_SHEAR = 0.12  # std of the shear
_SHIFT_PX = 4.0  # the translation is uniform within this many pixels along each axis
_TRIM = 0.15  # a stroke end is cut short by up to this fraction of the stroke
_INK_GAIN = (3.0, 8.0)  # pen pressure: ink per unit of blurred stroke density; larger gain, wider stroke

# -- rendering -----------------------------------------------------------------------------------
_GLYPH_HALF_WIDTH = 0.28  # half the glyph box, as a fraction of the image side
_SAMPLES_PER_STROKE = 32
_PEN_SIGMA = 0.9  # Gaussian pen profile, pixels at image_size 28
_CLASSES_PER_CHUNK = 256
_RENDER_PIXELS = 1 << 22


def _curve_points(controls: np.ndarray, angular: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at parameters ``t`` of strokes given by three control points each.

    Args:
        controls: ``[..., 3, 2]`` control points.
        angular: ``[...]`` bool, draw a polyline through the controls instead of a Bezier.
        t: ``[..., T]`` curve parameters in ``[0, 1]``.

    Returns:
        ``[..., T, 2]`` points.
    """
    p0, p1, p2 = (controls[..., None, i, :] for i in range(3))
    tt = t[..., None]
    bezier = (1 - tt) ** 2 * p0 + 2 * (1 - tt) * tt * p1 + tt**2 * p2
    first = np.clip(2 * tt, 0, 1)
    second = np.clip(2 * tt - 1, 0, 1)
    polyline = np.where(tt < 0.5, p0 + first * (p1 - p0), p1 + second * (p2 - p1))
    return np.where(angular[..., None, None], polyline, bezier)


def _characters(rng: np.random.Generator, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random characters: ``[C, S, 3, 2]`` control points, ``[C, S]`` angular and stroke masks.

    Each character is scaled and centred so its ink fills the box ``[-1, 1]^2``
    along its longer side.
    """
    max_strokes = max(_STROKES_PER_CLASS)
    num_strokes = rng.choice(_STROKES_PER_CLASS, size=num_classes, p=_STROKES_PROBS)
    present = np.arange(max_strokes) < num_strokes[:, None]
    start = rng.uniform(-1, 1, size=(num_classes, max_strokes, 2))
    controls = np.empty((num_classes, max_strokes, 3, 2))
    for s in range(max_strokes):
        if s:
            # Join to a random end of a random earlier stroke, as pen strokes of real characters meet.
            joined = rng.random(num_classes) < _CONNECT_PROB
            earlier = rng.integers(0, s, size=num_classes)
            end = rng.choice([0, 2], size=num_classes)
            anchor = controls[np.arange(num_classes), earlier, end]
            start[:, s] = np.where(joined[:, None], anchor, start[:, s])
        angle = rng.uniform(0, 2 * np.pi, size=num_classes)
        length = rng.uniform(*_STROKE_LENGTH, size=num_classes)
        chord = length[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        normal = np.stack([-chord[:, 1], chord[:, 0]], axis=-1)
        bend = rng.normal(0, _BEND, size=num_classes)[:, None]
        along = rng.uniform(0.3, 0.7, size=num_classes)[:, None]
        controls[:, s, 0] = start[:, s]
        controls[:, s, 1] = start[:, s] + along * chord + bend * normal
        controls[:, s, 2] = start[:, s] + chord
    angular = rng.random((num_classes, max_strokes)) < _ANGULAR_PROB

    points = _curve_points(controls, angular, np.linspace(0, 1, _SAMPLES_PER_STROKE))
    points = np.where(present[:, :, None, None], points, np.nan)
    low = np.nanmin(points, axis=(1, 2))
    high = np.nanmax(points, axis=(1, 2))
    centre = (low + high) / 2
    scale = 2 / np.maximum((high - low).max(axis=1), 1e-6)
    controls = (controls - centre[:, None, None]) * scale[:, None, None, None]
    return controls, angular, present


def _drawings(
    rng: np.random.Generator,
    controls: np.ndarray,
    angular: np.ndarray,
    present: np.ndarray,
    drawings_per_class: int,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered drawings of every character.

    Returns:
        ``[N, S, T, 2]`` pen positions in pixels, ``[N, S, T]`` ink weights (the
        arc length each position stands for, zero for absent strokes) and ``[N]``
        ink gains, with ``N = C * drawings_per_class`` in class-major order.
    """
    controls = np.repeat(controls, drawings_per_class, axis=0)
    angular = np.repeat(angular, drawings_per_class, axis=0)
    present = np.repeat(present, drawings_per_class, axis=0)
    n, max_strokes = present.shape
    controls = controls + rng.normal(0, _POINT_JITTER, size=controls.shape)

    start = rng.uniform(0, _TRIM, size=(n, max_strokes))
    stop = 1 - rng.uniform(0, _TRIM, size=(n, max_strokes))
    t = start[..., None] + (stop - start)[..., None] * np.linspace(0, 1, _SAMPLES_PER_STROKE)
    points = _curve_points(controls, angular, t)

    angle = np.deg2rad(rng.normal(0, _ROTATION_DEG, size=n))
    scale = np.exp(rng.normal(0, _LOG_SCALE, size=(n, 2)))
    shear = rng.normal(0, _SHEAR, size=n)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.zeros((n, 2, 2))
    shearing[:, 0, 0] = shearing[:, 1, 1] = 1
    shearing[:, 0, 1] = shear
    affine = rotation @ shearing * scale[:, None, :]
    half = _GLYPH_HALF_WIDTH * image_size
    shift = (image_size - 1) / 2 + rng.uniform(-1, 1, size=(n, 2)) * _SHIFT_PX * image_size / 28
    affine = affine[:, None, None] * half
    pixels = affine[..., 0] * points[..., :1] + affine[..., 1] * points[..., 1:] + shift[:, None, None, :]

    step = np.linalg.norm(np.diff(pixels, axis=2), axis=-1)
    weights = np.zeros(pixels.shape[:3])
    weights[..., 1:] += step / 2
    weights[..., :-1] += step / 2
    weights *= present[..., None]
    gain = rng.uniform(*_INK_GAIN, size=n)
    return pixels, weights, gain


def _render(pixels: np.ndarray, weights: np.ndarray, gain: np.ndarray, image_size: int) -> np.ndarray:
    """Anti-aliased ink images, ``uint8 [N, 1, S, S]``, bright ink on black.

    Pen positions are splatted bilinearly into an ink-density image (arc length
    per pixel), blurred with a Gaussian pen profile, scaled by the pen's ``gain`` and clipped at 1.
    """
    n = len(pixels)
    x, y = pixels[..., 0].reshape(n, -1), pixels[..., 1].reshape(n, -1)
    w = weights.reshape(n, -1)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    item = np.arange(n)[:, None]
    density = np.zeros(n * image_size * image_size)
    for dx, dy, share in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        col, row = x0 + dx, y0 + dy
        inside = (col >= 0) & (col < image_size) & (row >= 0) & (row < image_size)
        flat = (item * image_size + row.clip(0, image_size - 1)) * image_size + col.clip(0, image_size - 1)
        density += np.bincount(flat[inside].astype(np.int64), weights=(w * share)[inside], minlength=density.size)
    # The separable Gaussian blur as two products with a banded matrix: much faster than a 1-channel conv2d.
    sigma = _PEN_SIGMA * image_size / 28
    offsets = np.arange(image_size)
    blur = np.exp(-((offsets[:, None] - offsets[None, :]) ** 2) / (2 * sigma**2))
    blur = torch.from_numpy((blur / blur.sum(axis=1, keepdims=True)[image_size // 2]).astype(np.float32))
    image = torch.from_numpy(density.astype(np.float32)).view(n, image_size, image_size)
    image = blur @ image @ blur
    ink = (torch.from_numpy(gain.astype(np.float32)).view(n, 1, 1) * image).clamp_(max=1.0)
    ink = ink.unsqueeze(1)
    return ink.mul_(255).round_().to(torch.uint8).numpy()


def _check_sizes(num_classes: int, drawings_per_class: int, image_size: int) -> None:
    if num_classes < 1 or drawings_per_class < 1:
        raise DatasetError(
            f"num_classes={num_classes}, drawings_per_class={drawings_per_class}: both must be at least 1"
        )
    if image_size < 8:
        raise DatasetError(f"image_size={image_size}: glyphs need at least 8 x 8 pixels")


def generate_glyphs(
    num_classes: int, drawings_per_class: int = 20, image_size: int = 28, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_classes`` random characters, each drawn ``drawings_per_class`` times.

    Deterministic in ``seed``: the same arguments give the same images on every machine
    that runs the same numpy and torch.

    Returns:
        ``uint8 [num_classes * drawings_per_class, 1, image_size, image_size]``
        images (ink 255 on black 0), class-major, and their ``int64`` class labels.
    """
    _check_sizes(num_classes, drawings_per_class, image_size)
    class_rng, drawing_rng = (np.random.default_rng([seed, stream]) for stream in range(2))
    controls, angular, present = _characters(class_rng, num_classes)
    images = np.empty((num_classes * drawings_per_class, 1, image_size, image_size), dtype=np.uint8)
    # Jitter is drawn for fixed chunks of classes, so the random stream never depends on memory
    # limits; rendering goes in smaller batches that bound the density images to about 32 MB.
    per_render = max(1, _RENDER_PIXELS // image_size**2)
    for first in range(0, num_classes, _CLASSES_PER_CHUNK):
        part = slice(first, first + _CLASSES_PER_CHUNK)
        pixels, weights, gain = _drawings(
            drawing_rng, controls[part], angular[part], present[part], drawings_per_class, image_size
        )
        offset = first * drawings_per_class
        for start in range(0, len(pixels), per_render):
            batch = slice(start, start + per_render)
            rendered = _render(pixels[batch], weights[batch], gain[batch], image_size)
            images[offset + start : offset + start + len(rendered)] = rendered
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), drawings_per_class)
    return images, labels


def default_cache_dir() -> Path:
    """``$LIT_META_CACHE`` if set, else ``~/.cache/lit_meta``."""
    return Path(os.environ.get("LIT_META_CACHE") or Path.home() / ".cache" / "lit_meta")


class ProceduralGlyphs(MetaDataset):
    """Random stroke characters drawn by a jittery hand: Omniglot-like, embedded, download-free.

    Each class is a character of 2-4 pen strokes (quadratic Bezier curves or
    two-segment polylines; half of the strokes after the first start at an end
    of an earlier one). Each drawing redraws its strokes with control-point
    noise, a random rotation, anisotropic scale, shear and shift, a random pen
    width and randomly shortened stroke ends. Images are ``[1, image_size, image_size]``,
    ink 1.0 on black 0.0, like Omniglot at the resolution of Vinyals et al. (2016).

    The images are generated once (about 3 s for the default 25,000 on two CPU
    cores) and cached in ``root`` as ``.npy``; later constructions load the cache
    in well under a second. The file name holds every generation argument and
    the generator's format version.

    Classes are split at random (seeded by ``seed``) into disjoint meta-train,
    meta-val and meta-test classes by ``split_fractions``: by default 1,000 /
    125 / 125 of 1,250 classes. Class ids are the family's class numbers, so
    they are unique across splits.

    Args:
        num_classes: characters in the family, over all splits.
        drawings_per_class: drawings of each character.
        image_size: side of the square images, pixels.
        seed: seed of the characters, their drawings and the class split.
        split_fractions: fractions of the classes in the train, val and test splits.
        rotations: angles (multiples of 90) by which each character is rotated
            to make new classes, as is usual for Omniglot; ``(0,)`` for none.
        root: cache directory; default ``$LIT_META_CACHE`` or ``~/.cache/lit_meta``.
        transform: applied to each image, a float ``[1, S, S]`` tensor in ``[0, 1]``.
    """

    def __init__(
        self,
        num_classes: int = 1250,
        drawings_per_class: int = 20,
        image_size: int = 28,
        seed: int = 0,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        rotations: Sequence[int] = (0,),
        root: str | None = None,
        transform: Transform | None = None,
    ) -> None:
        _check_sizes(num_classes, drawings_per_class, image_size)
        self.num_classes = num_classes
        self.drawings_per_class = drawings_per_class
        self.image_size = image_size
        self.seed = seed
        self.split_fractions = tuple(split_fractions)
        self.rotations = tuple(rotations)
        self.root = Path(root) if root is not None else default_cache_dir()
        self.transform = transform
        if len(self.split_fractions) != len(SPLIT_NAMES):
            raise DatasetError(f"split_fractions={self.split_fractions}: give three fractions, for train, val and test")
        groups = split_classes_by_fraction(num_classes, self.split_fractions, seed)
        self.split_classes: dict[str, np.ndarray] = dict(zip(SPLIT_NAMES, groups, strict=True))

    @property
    def cache_path(self) -> Path:
        """Where the generated images are cached."""
        name = (
            f"glyphs-v{FORMAT_VERSION}-c{self.num_classes}-d{self.drawings_per_class}"
            f"-s{self.image_size}-seed{self.seed}.npy"
        )
        return self.root / name

    def prepare(self) -> None:
        """Generate the images and write the cache, unless it exists."""
        self._images()

    def _images(self) -> np.ndarray:
        path = self.cache_path
        expected = (self.num_classes * self.drawings_per_class, 1, self.image_size, self.image_size)
        if path.exists():
            try:
                images = np.load(path)
            except (OSError, ValueError, EOFError) as error:
                raise DatasetError(f"cannot read the glyph cache {path} ({error}); delete it to regenerate") from error
            if images.shape != expected or images.dtype != np.uint8:
                raise DatasetError(
                    f"the glyph cache {path} holds {images.dtype} {images.shape}, expected uint8 {expected}; "
                    "delete it to regenerate"
                )
            return images
        images, _ = generate_glyphs(self.num_classes, self.drawings_per_class, self.image_size, self.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename, so a crash or a concurrent process never leaves a partial cache.
        with atomic_file(path) as file:
            np.save(file, images)
        return images

    @cached_property
    def dataset(self) -> TensorClassDataset:
        """All classes of all splits, labelled by class number."""
        images = self._images()
        return TensorClassDataset(
            torch.from_numpy(images),
            labels=np.repeat(np.arange(self.num_classes), self.drawings_per_class),
            class_names=[f"glyph{c:05d}" for c in range(self.num_classes)],
            # With rotations the transform goes on the rotated view, after rotating.
            transform=self.transform if self.rotations == (0,) else None,
        )

    def split(self, name: SplitName) -> ClassIndexedDataset:
        if name not in self.split_classes:
            raise DatasetError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        subset = self.dataset.subset(self.split_classes[name])
        if self.rotations == (0,):
            return subset
        rotated = RotatedClasses(subset, self.rotations)
        rotated.transform = self.transform
        return rotated

    def image_preprocessing(self) -> ImagePreprocessing:
        """Grey-scale ``image_size`` squares, not inverted: files of new glyph-like images
        must be bright (white) ink on black, as the generated ones are.

        A custom ``transform`` is not stored in checkpoints (only its name, so
        ``lit-meta adapt`` can warn that it is not applied).
        """
        return ImagePreprocessing(
            "L", (self.image_size, self.image_size), invert=False, custom_transform=describe_transform(self.transform)
        )
