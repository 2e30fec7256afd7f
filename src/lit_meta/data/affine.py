"""Koch et al.'s random affine distortions of training images, as batched tensor ops seeded per episode."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.data.augmentation import float_range
from lit_meta.errors import AugmentationError


@dataclass(frozen=True)
class AffineDistortion:
    """Random affine distortion of every image, as Koch, Zemel & Salakhutdinov (2015), "Siamese Neural
    Networks for One-shot Image Recognition", ICML Deep Learning Workshop, Section 3.2 ("Affine
    distortions", Figure 5).

    Each image gets its own transform ``T = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y)``, every
    component drawn uniform in its range (the defaults are the paper's: ``theta`` in ``[-10, 10]``
    degrees, shears ``rho`` in ``[-0.3, 0.3]``, scales ``s`` in ``[0.8, 1.2]``, translations ``t``
    in ``[-2, 2]`` pixels) and each included with probability ``probability`` (the paper's 0.5),
    independently; an excluded component takes its identity value (0, or 1 for scales). A point
    ``p`` of the image, in pixels from the image's centre, moves to ``R(theta) H(rho) S(s) p + t``
    with ``H = [[1, rho_x], [rho_y, 1]]`` and ``S = diag(s_x, s_y)`` (the paper does not give the
    order of the components; this is one natural choice). The distorted image is resampled
    bilinearly (``F.affine_grid`` / ``F.grid_sample``), with zeros outside the image: the
    background of lit-meta's Omniglot items, whose ink is bright on zero.

    Deviation: the paper distorts the two images of each training pair (8 distortions of each pair
    added to the training set); used as the ``augmentation`` of an
    :class:`~lit_meta.data.datamodule.EpisodicDataModule`, every image of a meta-training episode is
    distorted once per episode, and every pair of the episode compares two distorted images.

    Calling it as ``distortion(images, generator)`` on a float ``[N, C, H, W]`` batch returns a new
    batch of the same shape; ``generator`` supplies every random draw, so equal seeds give equal
    pixels.

    Args:
        rotation: range of ``theta``, degrees (counter-clockwise on the displayed image).
        shear: range of ``rho_x`` and ``rho_y``; within ``(-1, 1)`` so the transform stays invertible.
        scale: range of ``s_x`` and ``s_y``; positive.
        translation: range of ``t_x`` and ``t_y``, pixels.
        probability: chance that each component is included.

    Raises:
        AugmentationError: a range that is not ``low <= high`` of finite numbers, a shear outside
            ``(-1, 1)``, a scale not positive, or a probability outside ``[0, 1]``.
    """

    rotation: tuple[float, float] = (-10.0, 10.0)
    shear: tuple[float, float] = (-0.3, 0.3)
    scale: tuple[float, float] = (0.8, 1.2)
    translation: tuple[float, float] = (-2.0, 2.0)
    probability: float = 0.5

    def __post_init__(self) -> None:
        bounds = {"rotation": None, "shear": (-1.0, 1.0), "scale": (0.0, math.inf), "translation": None}
        for name, limits in bounds.items():
            low, high = float_range(name, getattr(self, name))
            inside = limits is None or (limits[0] < low and high < limits[1])
            if not (math.isfinite(low) and math.isfinite(high) and low <= high and inside):
                where = "" if limits is None else f" strictly within ({limits[0]}, {limits[1]})"
                raise AugmentationError(
                    f"{name}={(low, high)}: a range of finite numbers low <= high{where}; the paper's is "
                    f"{getattr(AffineDistortion, name)}"
                )
            object.__setattr__(self, name, (low, high))  # a list (YAML, checkpoint) becomes a tuple
        if not 0 <= self.probability <= 1:
            raise AugmentationError(
                f"probability={self.probability}: the chance of including each component, in [0, 1] (the paper's 0.5)"
            )

    def transforms(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` drawn transforms: ``[n, 2, 2]`` linear parts and ``[n, 2]`` translations (pixels, x then y)."""
        ranges = (self.rotation, self.shear, self.shear, self.scale, self.scale, self.translation, self.translation)
        low = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
        high = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
        identity = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
        values = low + (high - low) * torch.rand(n, 7, generator=generator, dtype=torch.float64)
        included = torch.rand(n, 7, generator=generator, dtype=torch.float64) < self.probability
        theta, rho_x, rho_y, s_x, s_y, t_x, t_y = torch.where(included, values, identity).unbind(1)
        # theta turns counter-clockwise as displayed: image rows run downwards, so y is negated.
        cos, sin = torch.cos(torch.deg2rad(theta)), torch.sin(torch.deg2rad(theta))
        rotate = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        shear = torch.stack(
            [torch.stack([torch.ones_like(rho_x), rho_x], -1), torch.stack([rho_y, torch.ones_like(rho_y)], -1)], -2
        )
        linear = rotate @ shear @ torch.diag_embed(torch.stack([s_x, s_y], -1))
        return linear, torch.stack([t_x, t_y], -1)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The distorted ``images``.

        Raises:
            AugmentationError: ``images`` is not a float ``[N, C, H, W]`` batch.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise AugmentationError(
                f"augmentation expects a float [N, C, H, W] batch of images, got {images.dtype} of shape "
                f"{tuple(images.shape)}; augment image datasets only"
            )
        n, _, height, width = images.shape
        linear, shift = self.transforms(n, generator)
        # grid_sample needs, for every output point q, the input point T^-1(q) = A^-1 (q - t). In its
        # coordinates (align_corners=False) a pixel offset u from the centre is 2u / W (x) and 2v / H (y).
        to_grid = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
        inverse = torch.linalg.inv(linear)
        grid_linear = to_grid[:, None] * inverse / to_grid[None, :]
        grid_shift = -(grid_linear @ (to_grid * shift)[..., None])
        theta = torch.cat([grid_linear, grid_shift], -1).to(images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
