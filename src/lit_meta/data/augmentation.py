"""Train-time image augmentation as batched tensor ops, seeded per episode (no torchvision).

:class:`EpisodeAugmentation` applies a random resized crop, a horizontal flip and a
colour jitter to a whole episode's images at once: every image's parameters are drawn
in one go from the ``torch.Generator`` it is given. The
:class:`~lit_meta.data.episode.EpisodeDataset` seeds that generator with the episode's
:attr:`~lit_meta.data.sampler.EpisodePlan.augmentation_seed`, so an episode's augmented
pixels depend only on its coordinates ``(seed, split, epoch, index)``: the same in any
DataLoader worker and after resuming from a checkpoint.

The ops follow torchvision's definitions (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``ColorJitter``), written here on ``[N, C, H, W]`` float tensors in ``[0, 1]``:

* brightness ``b``: ``clamp(b * x)``;
* contrast ``c``: ``clamp(c * x + (1 - c) * mean(grey(x)))``, one mean per image;
* saturation ``s``: ``clamp(s * x + (1 - s) * grey(x))``, with ``grey`` the ITU-R 601-2
  luma ``0.2989 R + 0.587 G + 0.114 B`` (a no-op on one-channel images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.errors import AugmentationError

_CROP_TRIES = 10  # torchvision's RandomResizedCrop draws up to 10 boxes before its central fallback
_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class EpisodeAugmentation:
    """Random resized crop, horizontal flip and colour jitter of a batch of images.

    The defaults are the train-time pipeline of Chen et al. (2019, "A Closer Look at
    Few-shot Classification", ICLR; ``data/datamgr.py`` of their code): a
    ``RandomResizedCrop`` with torchvision's default scale and ratio, a jitter of
    brightness, contrast and colour by factors in ``[0.6, 1.4]``, and a horizontal flip
    of every other image. The ResNet-12 pipelines of Lee et al. (2019, MetaOptNet) and
    Tian et al. (2020, RFS) jitter and flip alike but crop differently (a random 84x84
    crop of the image padded by 8 pixels, not offered here). It suits natural images
    (miniImageNet, CIFAR-FS, CUB). Characters (Omniglot, glyphs) change class when
    flipped: set ``horizontal_flip=0`` for them.

    Calling it as ``augmentation(images, generator)`` on a float ``[N, C, H, W]`` batch
    in ``[0, 1]`` returns a new batch of the same shape, the images cropped, then
    flipped, then jittered (brightness, contrast, saturation, in that fixed order, as
    Chen et al.'s ``ImageJitter``; torchvision's ``ColorJitter`` shuffles the order per
    image). Each image gets its own parameters.

    Args:
        crop_scale: range of the crop's area as a fraction of the image's, or ``None``
            for no crop. The crop, resized back to ``H x W`` (bilinear), is drawn as
            torchvision's: an area fraction uniform in ``crop_scale`` and an aspect
            ratio log-uniform in ``crop_ratio``, redrawn up to 10 times until the box
            fits in the image, else the largest central box whose ratio is in range.
            Boxes are continuous (sub-pixel) and the image is sampled at the output
            pixels' centres in the box. ``(1.0, 1.0)`` with ratio ``(1, 1)`` on square
            images is the identity.
        crop_ratio: range of the crop's width / height.
        horizontal_flip: probability of mirroring an image left to right.
        brightness: brightness factor drawn uniform in ``[max(0, 1 - brightness), 1 +
            brightness]``; 0 turns it off. Likewise ``contrast`` and ``saturation``.
        contrast: see ``brightness``.
        saturation: see ``brightness``; one-channel images are left as they are.

    Raises:
        AugmentationError: a value outside its range, naming the field and the fix.
    """

    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __post_init__(self) -> None:
        if self.crop_scale is not None:
            scale = float_range("crop_scale", self.crop_scale)
            if not 0 < scale[0] <= scale[1] <= 1:
                raise AugmentationError(
                    f"crop_scale={scale}: the crop's area fraction must satisfy 0 < low <= high <= 1, "
                    "e.g. (0.08, 1.0); or None for no crop"
                )
            object.__setattr__(self, "crop_scale", scale)  # a list (YAML, checkpoint) becomes a tuple
        ratio = float_range("crop_ratio", self.crop_ratio)
        if not 0 < ratio[0] <= ratio[1]:
            raise AugmentationError(
                f"crop_ratio={ratio}: the crop's width / height must satisfy 0 < low <= high, e.g. (0.75, 1.333)"
            )
        object.__setattr__(self, "crop_ratio", ratio)
        if not 0 <= self.horizontal_flip <= 1:
            raise AugmentationError(
                f"horizontal_flip={self.horizontal_flip}: a probability, in [0, 1] (0.5 flips every other image, "
                "0 never)"
            )
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise AugmentationError(
                    f"{name}={value}: a jitter strength, >= 0 (factors drawn in [max(0, 1 - {name}), 1 + {name}]; "
                    "0 turns it off)"
                )

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The augmented ``images``; ``generator`` supplies every random draw, so equal seeds give equal pixels.

        Raises:
            AugmentationError: ``images`` is not a float ``[N, C, H, W]`` batch, or a
                colour jitter is asked of images with neither 1 nor 3 channels.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise AugmentationError(
                f"augmentation expects a float [N, C, H, W] batch of images, got {images.dtype} of shape "
                f"{tuple(images.shape)}; augment image datasets only"
            )
        n, channels, height, width = images.shape
        if (self.contrast or self.saturation) and channels not in (1, 3):
            raise AugmentationError(
                f"contrast and saturation jitter need grey (1-channel) or RGB (3-channel) images, got {channels} "
                "channels; set contrast=0 and saturation=0"
            )
        boxes = None if self.crop_scale is None else self.crop_boxes(n, height, width, generator)
        flip = torch.rand(n, generator=generator) < self.horizontal_flip if self.horizontal_flip else None
        owned = False  # whether `images` is a tensor of this call's own, which the jitter may overwrite
        if boxes is not None:
            images, owned = resized_crop(images, boxes, mirror=flip), True  # the flip comes free with the resampling
        elif flip is not None and flip.any():
            images, owned = images.clone(), True
            images[flip] = images[flip].flip(-1)
        for strength, adjust in (
            (self.brightness, adjust_brightness),
            (self.contrast, adjust_contrast),
            (self.saturation, adjust_saturation),
        ):
            if strength:
                low = max(0.0, 1.0 - strength)
                factors = low + (1.0 + strength - low) * torch.rand(n, generator=generator)
                # In place once owned: a fresh episode-sized tensor per op costs more in page faults than the op.
                adjusted = adjust(images, factors, inplace=owned)
                owned, images = owned or adjusted is not images, adjusted
        return images

    def crop_boxes(self, n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """``[n, 4]`` crop boxes ``(left, top, box width, box height)`` in pixels, drawn as documented in the class."""
        assert self.crop_scale is not None
        (scale_low, scale_high), (ratio_low, ratio_high) = self.crop_scale, self.crop_ratio
        area = height * width * (scale_low + (scale_high - scale_low) * torch.rand(n, _CROP_TRIES, generator=generator))
        log_low, log_high = math.log(ratio_low), math.log(ratio_high)
        aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(n, _CROP_TRIES, generator=generator))
        box_w, box_h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        fits = (box_w <= width) & (box_h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first box that fits (argmax takes the first)
        box_w, box_h = box_w.gather(1, first)[:, 0], box_h.gather(1, first)[:, 0]
        # No box fits in 10 tries: the central box of the whole image, narrowed to the nearest ratio in range.
        image_ratio = width / height
        fallback_w = width if image_ratio <= ratio_high else height * ratio_high
        fallback_h = height if image_ratio >= ratio_low else width / ratio_low
        found = fits.any(1)
        box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
        box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
        where = torch.rand(n, 2, generator=generator)
        where = torch.where(found[:, None], where, torch.full_like(where, 0.5))
        left, top = where[:, 0] * (width - box_w), where[:, 1] * (height - box_h)
        return torch.stack([left, top, box_w, box_h], dim=1)


def resized_crop(images: Tensor, boxes: Tensor, mirror: Tensor | None = None) -> Tensor:
    """Each image's box ``(left, top, width, height)`` (pixels) resized to the image's size, bilinear.

    The image is sampled at the centres of the output pixels laid over the box, ``left
    + (j + 0.5) * width / W`` (and so on) in the pixel-edge coordinates where the image
    spans ``[0, W]``; samples between the outermost pixel centres and the image's edge
    take the edge's value. ``mirror`` (``[N]`` booleans) lays the output pixels over the
    box right to left: the crop of those images comes out flipped.
    """
    n, _, height, width = images.shape
    boxes = boxes.to(images.dtype)
    left, top, box_w, box_h = boxes.unbind(1)
    span_x = box_w if mirror is None else torch.where(mirror, -box_w, box_w)  # right to left when mirrored
    # grid_sample's coordinates run from -1 to 1 over the image's edges; the grid is separable, so it is
    # built from its columns and rows (F.affine_grid computes every point with a matrix product: slower,
    # see benchmarks/augmentation_cost.py).
    centres_x = (torch.arange(width, dtype=images.dtype) + 0.5) / width - 0.5
    centres_y = (torch.arange(height, dtype=images.dtype) + 0.5) / height - 0.5
    grid_x = (2 * left + box_w)[:, None] / width - 1 + 2 * span_x[:, None] / width * centres_x
    grid_y = (2 * top + box_h)[:, None] / height - 1 + 2 * box_h[:, None] / height * centres_y
    grid = torch.stack([grid_x[:, None, :].expand(n, height, width), grid_y[:, :, None].expand(n, height, width)], -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma of RGB ``images`` (ITU-R 601-2); one-channel images unchanged."""
    if images.shape[-3] == 1:
        return images
    luma = torch.tensor(_LUMA, dtype=images.dtype)
    return torch.matmul(luma, images.flatten(-2)).view(*images.shape[:-3], 1, *images.shape[-2:])


def _blend(images: Tensor, other: Tensor, factors: Tensor, inplace: bool) -> Tensor:
    """``clamp(f * images + (1 - f) * other, 0, 1)`` with one factor ``f`` per image."""
    weight = factors.to(images.dtype)[:, None, None, None]
    return torch.lerp(other, images, weight, out=images if inplace else None).clamp_(0, 1)


def adjust_brightness(images: Tensor, factors: Tensor, inplace: bool = False) -> Tensor:
    """Each image scaled by its factor, clamped to ``[0, 1]``; ``inplace`` writes into ``images``."""
    weight = factors.to(images.dtype)[:, None, None, None]
    return (images.mul_(weight) if inplace else images.mul(weight)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factors: Tensor, inplace: bool = False) -> Tensor:
    """Each image blended with the mean of its grey levels (a flat grey image) by its factor."""
    channel_means = images.mean(dim=(-2, -1))  # the grey mean is the luma of the channel means: one pass
    grey = channel_means[:, 0] if images.shape[-3] == 1 else channel_means @ torch.tensor(_LUMA, dtype=images.dtype)
    return _blend(images, grey[:, None, None, None].expand_as(images), factors, inplace)


def adjust_saturation(images: Tensor, factors: Tensor, inplace: bool = False) -> Tensor:
    """Each RGB image blended with its grey version by its factor; one-channel images unchanged."""
    if images.shape[-3] == 1:
        return images
    return _blend(images, grayscale(images).expand_as(images), factors, inplace)


def float_range(name: str, value: object) -> tuple[float, float]:
    """``value`` as a ``(low, high)`` tuple of floats, or an :class:`AugmentationError` naming ``name``."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise AugmentationError(f"{name}={value!r}: expected two numbers (low, high)") from None
    return low, high
