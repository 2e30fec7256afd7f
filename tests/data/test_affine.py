"""AffineDistortion: Koch et al.'s random affine distortions, per image, seeded, within their ranges."""

from __future__ import annotations

import math

import pytest
import torch

from lit_meta.data import AffineDistortion, EpisodicDataModule
from lit_meta.errors import AugmentationError

from ..conftest import TinyImages

OFF = {"rotation": (0.0, 0.0), "shear": (0.0, 0.0), "scale": (1.0, 1.0), "translation": (0.0, 0.0)}
"""Every component at its identity: each test turns on the one it checks."""


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dots(n: int, size: int = 33, at: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """``n`` black images with one bright pixel at ``(row, column) = at``."""
    images = torch.zeros(n, 1, size, size)
    images[:, :, at[0], at[1]] = 1.0
    return images


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """``[n, 2]`` (x, y) centres of the images' ink, in pixels."""
    size = images.shape[-1]
    mass = images.sum(dim=(1, 2, 3))
    coords = torch.arange(size, dtype=images.dtype)
    x = (images.sum(dim=(1, 2)) * coords).sum(-1) / mass
    y = (images.sum(dim=(1, 3)) * coords).sum(-1) / mass
    return torch.stack([x, y], -1)


def test_probability_zero_is_the_identity():
    images = torch.rand(4, 1, 20, 20, generator=seeded())
    torch.testing.assert_close(AffineDistortion(probability=0.0)(images, seeded()), images)


def test_the_same_seed_gives_the_same_pixels_and_images_get_their_own_transforms():
    images = torch.rand(6, 1, 20, 20, generator=seeded())
    distortion = AffineDistortion()
    first, again, other = distortion(images, seeded(3)), distortion(images, seeded(3)), distortion(images, seeded(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    same = torch.rand(1, 1, 20, 20, generator=seeded()).expand(6, 1, 20, 20)
    out = AffineDistortion(probability=1.0)(same, seeded())
    assert len({tuple(o.flatten().tolist()) for o in out}) == 6


def test_translation_moves_a_dot_by_at_most_two_pixels():
    moved = centre_of_mass(AffineDistortion(**{**OFF, "translation": (-2.0, 2.0)}, probability=1.0)(dots(64), seeded()))
    offsets = moved - 16
    assert offsets.abs().max() <= 2 + 1e-4 and offsets.abs().max() > 1  # in range, and drawn over it
    exact = AffineDistortion(**{**OFF, "translation": (2.0, 2.0)}, probability=1.0)(dots(1), seeded())
    assert exact[0, 0, 18, 18] == pytest.approx(1.0)  # +2 px right (x) and down (y)


def test_rotation_turns_a_dot_by_at_most_ten_degrees_about_the_centre():
    out = AffineDistortion(**{**OFF, "rotation": (-10.0, 10.0)}, probability=1.0)(dots(64, at=(16, 28)), seeded())
    x, y = (centre_of_mass(out) - 16).unbind(1)
    angles = torch.rad2deg(torch.atan2(-y, x))  # counter-clockwise as displayed (rows run down)
    assert angles.abs().max() <= 10.5 and angles.abs().max() > 5
    assert torch.hypot(x, y).sub(12).abs().max() < 0.3  # a rotation keeps the distance
    ccw = AffineDistortion(**{**OFF, "rotation": (90.0, 90.0)}, probability=1.0)(dots(1, at=(16, 28)), seeded())
    assert ccw[0, 0, 4, 16] == pytest.approx(1.0, abs=1e-4)  # right of the centre -> above it


def test_scale_and_shear_stay_in_their_ranges():
    scaled = AffineDistortion(**{**OFF, "scale": (0.8, 1.2)}, probability=1.0)(dots(64, at=(16, 26)), seeded())
    ratio = (centre_of_mass(scaled)[:, 0] - 16) / 10
    assert ratio.min() >= 0.8 - 1e-3 and ratio.max() <= 1.2 + 1e-3 and ratio.max() - ratio.min() > 0.2
    sheared = AffineDistortion(**{**OFF, "shear": (-0.3, 0.3)}, probability=1.0)(dots(64, at=(26, 16)), seeded())
    x = centre_of_mass(sheared)[:, 0] - 16  # a dot 10 px below the centre moves sideways by rho_x * 10
    assert x.abs().max() <= 3 + 1e-3 and x.abs().max() > 1.5


def test_each_component_is_included_with_its_probability():
    distortion = AffineDistortion(probability=0.5)
    linear, shift = distortion.transforms(4000, seeded())
    untranslated = (shift == 0).double().mean(0)
    assert torch.allclose(untranslated, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=0.03)
    identity = torch.isclose(linear, torch.eye(2, dtype=torch.float64)).all(-1).all(-1).double().mean()
    assert identity.item() == pytest.approx(0.5**5, abs=0.01)  # theta, two shears, two scales all left out


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rotation": (10.0, -10.0)}, r"rotation=\(10.0, -10.0\): a range of finite numbers low <= high"),
        ({"shear": (-1.0, 0.3)}, r"shear=\(-1.0, 0.3\): .*strictly within \(-1.0, 1.0\)"),
        ({"scale": (0.0, 1.2)}, r"scale=\(0.0, 1.2\): .*strictly within \(0.0, inf\); the paper's is \(0.8, 1.2\)"),
        ({"translation": (math.nan, 2.0)}, r"translation=\(nan, 2.0\): a range of finite numbers"),
        ({"translation": "2"}, r"translation='2': expected two numbers"),
        ({"probability": 1.5}, r"probability=1.5: the chance of including each component, in \[0, 1\]"),
    ],
)
def test_bad_ranges_are_refused_with_one_clear_error(fields, message):
    with pytest.raises(AugmentationError, match=message):
        AffineDistortion(**fields)


def test_the_datamodule_takes_it_and_keeps_it_as_a_class_path_in_its_hyperparameters():
    shape = dict(ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4, val_episodes=2, test_episodes=2)
    distortion = AffineDistortion(rotation=[-5, 5], probability=1.0)  # type: ignore[arg-type]
    dm = EpisodicDataModule(TinyImages(), **shape, augmentation=distortion)
    stored = dm.hparams.augmentation
    assert stored == {
        "class_path": "lit_meta.data.affine.AffineDistortion",
        "init_args": {**AffineDistortion().__dict__, "rotation": (-5.0, 5.0), "probability": 1.0},
    }
    assert EpisodicDataModule(TinyImages(), **shape, augmentation=stored).augmentation == distortion
    plain = EpisodicDataModule(TinyImages(), **shape)
    for split, changed in (("train", True), ("test", False)):
        a, b = next(iter(plain.episode_loader(split))), next(iter(dm.episode_loader(split)))
        assert torch.equal(a.query_x, b.query_x) is not changed, split
