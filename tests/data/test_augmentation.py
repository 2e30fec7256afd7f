"""Train-time augmentation as batched tensor ops, seeded per episode, and per-dataset normalisation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_meta.adaptation import stored_preprocessing
from lit_meta.cli import main
from lit_meta.data import EpisodeDataset, EpisodeSampler, EpisodeShape, EpisodicDataModule
from lit_meta.data.augmentation import (
    EpisodeAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    resized_crop,
)
from lit_meta.data.datasets import ImageFolder
from lit_meta.data.preprocessing import ImagePreprocessing
from lit_meta.errors import AugmentationError, DatasetError

from ..cli.test_resume import LEARNERS, final_weights, fit, train_losses, write_config
from ..conftest import TinyImages
from .test_image_folder import make_folders

NONE = EpisodeAugmentation(crop_scale=None, horizontal_flip=0, brightness=0, contrast=0, saturation=0)
"""Every op off: each test turns on the one it checks."""


def images(n: int = 6, channels: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the batch op -----------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_same_shape_dtype_and_range(channels):
    x = images(channels=channels)
    out = EpisodeAugmentation()(x, seeded())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


def test_same_generator_seed_gives_the_same_pixels_and_another_seed_others():
    augmentation, x = EpisodeAugmentation(), images()
    assert torch.equal(augmentation(x, seeded(7)), augmentation(x, seeded(7)))
    assert not torch.equal(augmentation(x, seeded(7)), augmentation(x, seeded(8)))


def test_no_op_leaves_the_images_alone():
    x = images()
    assert torch.equal(NONE(x, seeded()), x)


def test_flip_is_torch_flip_of_the_drawn_images():
    x = images(n=64)
    always = EpisodeAugmentation(**{**NONE.__dict__, "horizontal_flip": 1.0})
    assert torch.equal(always(x, seeded()), x.flip(-1))
    half = EpisodeAugmentation(**{**NONE.__dict__, "horizontal_flip": 0.5})(x, seeded())
    flipped = [torch.equal(a, b.flip(-1)) for a, b in zip(half, x, strict=True)]
    assert all(f or torch.equal(a, b) for f, a, b in zip(flipped, half, x, strict=True))
    assert 16 < sum(flipped) < 48


def test_with_a_crop_the_flip_mirrors_the_cropped_image():
    """With a crop the flip is folded into the resampling; the boxes are drawn before the flips."""
    crop = {**NONE.__dict__, "crop_scale": (0.3, 0.9)}
    x = images()
    flipped = EpisodeAugmentation(**{**crop, "horizontal_flip": 1.0})(x, seeded())
    unflipped = EpisodeAugmentation(**{**crop, "horizontal_flip": 0.0})(x, seeded())
    assert not torch.allclose(unflipped, x, atol=1e-3)
    torch.testing.assert_close(flipped, unflipped.flip(-1), atol=1e-6, rtol=0)


def test_crop_of_the_whole_square_image_is_the_identity():
    whole = EpisodeAugmentation(**{**NONE.__dict__, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)})
    x = images()
    torch.testing.assert_close(whole(x, seeded()), x, atol=1e-6, rtol=0)


def test_resized_crop_samples_the_box_at_the_output_pixel_centres():
    """Bilinear sampling reproduces a linear ramp exactly: the output is the ramp at the mapped centres."""
    size = 16
    pixels = torch.arange(size, dtype=torch.float64)
    ys, xs = torch.meshgrid(pixels, pixels, indexing="ij")
    ramp = (0.03 * xs + 0.02 * ys)[None, None]  # value at pixel centre (x, y) in pixel-index coordinates
    left, top, width, height = 2.25, 3.5, 8.0, 6.0  # well inside the image: no edge clamping
    out = resized_crop(ramp, torch.tensor([[left, top, width, height]]))
    # Output pixel j's centre lies at left + (j + 0.5) * width / size in edge coordinates, - 0.5 in index ones.
    source_x = left + (xs + 0.5) * width / size - 0.5
    source_y = top + (ys + 0.5) * height / size - 0.5
    torch.testing.assert_close(out[0, 0], 0.03 * source_x + 0.02 * source_y)


def test_crop_boxes_follow_the_scale_and_ratio_ranges_and_fit_the_image():
    augmentation = EpisodeAugmentation(crop_scale=(0.2, 0.6), crop_ratio=(0.5, 2.0))
    boxes = augmentation.crop_boxes(500, 20, 30, seeded())
    left, top, width, height = boxes.unbind(1)
    assert ((width * height / 600 >= 0.2 - 1e-6) & (width * height / 600 <= 0.6 + 1e-6)).all()
    assert ((width / height >= 0.5 - 1e-6) & (width / height <= 2.0 + 1e-6)).all()
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + width <= 30 + 1e-4).all() and (top + height <= 20 + 1e-4).all()


def test_a_crop_that_never_fits_falls_back_to_the_central_box_of_the_nearest_ratio():
    """torchvision's fallback: the whole image narrowed to the ratio range, centred."""
    wide = EpisodeAugmentation(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    boxes = wide.crop_boxes(4, 12, 12, seeded())
    assert torch.allclose(boxes, torch.tensor([[0.0, 3.0, 12.0, 6.0]]).expand(4, 4))


def test_brightness_factor_is_applied_exactly():
    x = images() * 0.5  # factors <= 1.5 never clamp
    factors = torch.linspace(0.6, 1.4, len(x))
    assert torch.equal(adjust_brightness(x, factors), (factors[:, None, None, None] * x).clamp(0, 1))
    out = EpisodeAugmentation(**{**NONE.__dict__, "brightness": 0.5})(x, seeded())
    drawn = (out / x).flatten(1)
    torch.testing.assert_close(drawn, drawn[:, :1].expand_as(drawn))  # one factor per image
    assert ((drawn >= 0.5 - 1e-6) & (drawn <= 1.5 + 1e-6)).all()


def test_contrast_blends_with_the_mean_grey_level_as_torchvision_defines_it():
    x, factors = images(), torch.linspace(0.2, 1.8, 6)
    grey = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    mean = grey.mean(dim=(1, 2))[:, None, None, None]
    expected = (factors[:, None, None, None] * x + (1 - factors[:, None, None, None]) * mean).clamp(0, 1)
    torch.testing.assert_close(adjust_contrast(x, factors), expected)
    one = x[:, :1]
    expected_grey = factors[:, None, None, None] * one + (1 - factors[:, None, None, None]) * one.mean((1, 2, 3), True)
    torch.testing.assert_close(adjust_contrast(one, factors), expected_grey.clamp(0, 1))


def test_saturation_blends_with_the_grey_image_and_leaves_grey_images_alone():
    x, factors = images(), torch.linspace(0.0, 2.0, 6)
    grey = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    expected = (factors[:, None, None, None] * x + (1 - factors[:, None, None, None]) * grey).clamp(0, 1)
    torch.testing.assert_close(adjust_saturation(x, factors), expected)
    assert torch.equal(adjust_saturation(x, torch.zeros(6))[:, 1], grey[:, 0].clamp(0, 1))  # factor 0: all grey
    one = x[:, :1]
    assert torch.equal(EpisodeAugmentation(**{**NONE.__dict__, "saturation": 0.9})(one, seeded()), one)


def test_the_jitter_applies_brightness_then_contrast_then_saturation_with_one_draw_each():
    """The call works in place on its own copy; the result is the chain of the pure ops, the input untouched."""
    x = images()
    before = x.clone()
    jitter = EpisodeAugmentation(**{**NONE.__dict__, "brightness": 0.4, "contrast": 0.3, "saturation": 0.2})
    out = jitter(x, seeded(3))
    draws = seeded(3)
    expected = x
    for strength, adjust in ((0.4, adjust_brightness), (0.3, adjust_contrast), (0.2, adjust_saturation)):
        expected = adjust(expected, 1 - strength + 2 * strength * torch.rand(len(x), generator=draws))
    torch.testing.assert_close(out, expected)
    assert torch.equal(x, before)
    cropped = EpisodeAugmentation(crop_scale=(0.5, 1.0))(x, seeded())
    assert torch.equal(x, before) and not torch.equal(cropped, x)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("crop_scale", (0.5, 0.2), "crop_scale=(0.5, 0.2): the crop's area fraction must satisfy 0 < low <= high <= 1"),
        ("crop_scale", (0.0, 1.0), "crop_scale=(0.0, 1.0)"),
        ("crop_scale", (0.1, 1.5), "e.g. (0.08, 1.0); or None for no crop"),
        ("crop_scale", 0.5, "crop_scale=0.5: expected two numbers (low, high)"),
        ("crop_ratio", (0.0, 1.0), "crop_ratio=(0.0, 1.0): the crop's width / height must satisfy 0 < low <= high"),
        ("horizontal_flip", 1.5, "horizontal_flip=1.5: a probability, in [0, 1]"),
        ("brightness", -0.1, "brightness=-0.1: a jitter strength, >= 0"),
        ("contrast", math.nan, "contrast=nan: a jitter strength, >= 0"),
        ("saturation", math.inf, "saturation=inf"),
    ],
)
def test_a_value_out_of_range_names_the_field_and_the_fix(field, value, message):
    with pytest.raises(AugmentationError) as error:
        EpisodeAugmentation(**{field: value})
    assert message in str(error.value)


def test_a_batch_that_is_not_images_is_refused():
    with pytest.raises(AugmentationError, match=r"float \[N, C, H, W\] batch of images, got torch.float32 of shape"):
        EpisodeAugmentation()(torch.rand(4, 10), seeded())
    with pytest.raises(AugmentationError, match="got 2 channels; set contrast=0 and saturation=0"):
        EpisodeAugmentation()(torch.rand(4, 2, 8, 8), seeded())


def test_lists_from_yaml_or_a_checkpoint_become_tuples():
    augmentation = EpisodeAugmentation(crop_scale=[0.5, 1], crop_ratio=[1, 1])  # type: ignore[arg-type]
    assert augmentation.crop_scale == (0.5, 1.0) and augmentation.crop_ratio == (1.0, 1.0)


# -- per episode --------------------------------------------------------------------------------
def test_an_episode_plan_carries_its_augmentation_seed_and_the_same_plan_gives_the_same_pixels(tiny_images):
    split = tiny_images.split("train")
    sampler = EpisodeSampler(split, EpisodeShape(3, 1, 2), num_episodes=4, seed=5)
    plans = list(sampler)
    assert len({plan.augmentation_seed for plan in plans}) == 4
    assert [p.augmentation_seed for p in plans] == [sampler.plan(i).augmentation_seed for i in range(4)]
    augmented = EpisodeDataset(split, EpisodeAugmentation())
    first, again = augmented[plans[0]], augmented[sampler.plan(0)]
    assert torch.equal(first.support_x, again.support_x) and torch.equal(first.query_x, again.query_x)
    plain = EpisodeDataset(split)[plans[0]]
    assert not torch.equal(first.query_x, plain.query_x) and torch.equal(first.query_y, plain.query_y)
    # Two episodes of the same items still differ: the seed, not the items, sets the draws.
    same_items = plans[1]._replace(task=plans[0].task, support=plans[0].support, query=plans[0].query)
    assert not torch.equal(augmented[same_items].support_x, first.support_x)


def tiny_datamodule(**kwargs) -> EpisodicDataModule:
    shape = dict(ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4, val_episodes=2, test_episodes=2)
    return EpisodicDataModule(TinyImages(), **{**shape, **kwargs})


def test_only_meta_train_episodes_are_augmented():
    plain, augmented = tiny_datamodule(), tiny_datamodule(augmentation=EpisodeAugmentation())
    for split, changed in (("train", True), ("val", False), ("test", False)):
        a, b = next(iter(plain.episode_loader(split))), next(iter(augmented.episode_loader(split)))
        assert torch.equal(a.classes, b.classes) and torch.equal(a.support_y, b.support_y)
        assert torch.equal(a.support_x, b.support_x) is not changed, split
        assert torch.equal(a.query_x, b.query_x) is not changed, split


def test_the_hyperparameters_keep_the_augmentation_as_plain_values_and_accept_them_back():
    augmentation = EpisodeAugmentation(horizontal_flip=0.0, brightness=0.2)
    dm = tiny_datamodule(augmentation=augmentation)
    stored = dm.hparams.augmentation
    assert stored == {**EpisodeAugmentation().__dict__, "horizontal_flip": 0.0, "brightness": 0.2}
    assert tiny_datamodule(augmentation=stored).augmentation == augmentation


def test_augmenting_regression_tasks_is_refused_before_training():
    dm = EpisodicDataModule("sinusoid", augmentation=EpisodeAugmentation(), meta_batch_size=2, train_episodes=4)
    with pytest.raises(AugmentationError, match="draws regression tasks, not images; remove augmentation"):
        dm.setup("fit")


def test_resuming_an_augmented_cli_run_replays_it_bitwise(tmp_path):
    """The real ``lit-meta fit`` on glyphs, augmentation from the YAML and the command line, resumed mid-epoch."""
    config = write_config(tmp_path, LEARNERS["protonet"], num_workers=0)
    values = yaml.safe_load(config.read_text())
    values["data"]["augmentation"] = {"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0}
    config.write_text(yaml.safe_dump(values))
    brightness = ("--data.augmentation.brightness", "0.3")
    uninterrupted = fit(config, tmp_path / "uninterrupted", *brightness)
    checkpoint = torch.load(uninterrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stored = checkpoint["datamodule_hyper_parameters"]["augmentation"]  # plain values: weights_only loads them
    assert EpisodeAugmentation(**stored) == EpisodeAugmentation((0.5, 1.0), horizontal_flip=0, brightness=0.3)
    mid_epoch = uninterrupted / "checkpoints" / "step=6.ckpt"
    resumed = fit(config, tmp_path / "resumed", *brightness, "--ckpt_path", str(mid_epoch))
    expected, replayed = train_losses(uninterrupted), train_losses(resumed)
    assert replayed and replayed == {s: expected[s] for s in replayed}
    before, after = final_weights(uninterrupted), final_weights(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_command_line_names_the_config_key_of_a_refused_augmentation_value(tmp_path, capsys):
    args = ["fit", "--model", "lit_meta.ProtoNet", "--model.backbone", "lit_meta.backbones.Conv4"]
    args += ["--data.root", str(tmp_path), "--data.dataset_kwargs", "{num_classes: 60, drawings_per_class: 6}"]
    assert main([*args, "--data.augmentation.brightness", "-1", "--trainer.fast_dev_run", "true"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lit-meta: error: data.augmentation.brightness=-1.0: a jitter strength, >= 0 (factors drawn in "
        "[max(0, 1 - brightness), 1 + brightness]; 0 turns it off)"
    )


# -- normalisation ------------------------------------------------------------------------------
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def normalised(x: torch.Tensor) -> torch.Tensor:
    """The reference: ``(x - MEAN) / STD`` per channel."""
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_image_preprocessing_normalises_after_the_division_by_255(tmp_path):
    root = make_folders(tmp_path / "images")
    path = next((root / "class00").glob("img0.*"))
    plain = ImagePreprocessing("RGB", (8, 8))
    torch.testing.assert_close(ImagePreprocessing("RGB", (8, 8), mean=MEAN, std=STD)(path), normalised(plain(path)))


def test_image_preprocessing_stores_the_statistics_and_reads_older_entries_without_them():
    normalised = ImagePreprocessing("RGB", (8, 8), mean=MEAN, std=STD)
    assert normalised.to_dict()["mean"] == list(MEAN) and normalised.to_dict()["std"] == list(STD)
    assert ImagePreprocessing.from_dict(normalised.to_dict()) == normalised
    older = {"mode": "L", "size": [28, 28], "invert": True, "custom_transform": None}
    assert ImagePreprocessing.from_dict(older) == ImagePreprocessing("L", (28, 28), invert=True)


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ((0.5,), (0.2,), "RGB images: mean=[0.5] lists 1 values; give one per channel (3)"),
        (MEAN, None, "RGB images: mean is given without std; give both (one value per channel) or neither"),
        (MEAN, (0.2, 0.0, 0.3), "std=[0.2, 0.0, 0.3]; every value must be finite, and every std positive"),
    ],
)
def test_image_preprocessing_refuses_statistics_that_do_not_fit(mean, std, message):
    with pytest.raises(DatasetError) as error:
        ImagePreprocessing("RGB", (8, 8), mean=mean, std=std)
    assert message in str(error.value)


def image_folder_datamodule(root: Path, **kwargs) -> EpisodicDataModule:
    dataset_kwargs = {"image_size": 8, **kwargs.pop("dataset_kwargs", {})}
    shape = dict(ways=2, shots=1, queries=1, meta_batch_size=1, train_episodes=2, val_episodes=1, test_episodes=1)
    return EpisodicDataModule("image_folder", root=str(root), dataset_kwargs=dataset_kwargs, **shape, **kwargs)


def test_normalize_uses_the_dataset_statistics_in_every_split_and_stores_them_for_adapt(tmp_path):
    root = make_folders(tmp_path / "images")
    plain = image_folder_datamodule(root)
    statistics = {"mean": MEAN, "std": STD}
    normalising = image_folder_datamodule(root, dataset_kwargs=statistics, normalize=True)
    for split in ("train", "val", "test"):
        a, b = next(iter(plain.episode_loader(split))), next(iter(normalising.episode_loader(split)))
        torch.testing.assert_close(b.query_x, normalised(a.query_x))
    stored = stored_preprocessing({"EpisodicDataModule": normalising.state_dict()})
    assert stored == ImagePreprocessing("RGB", (8, 8), mean=MEAN, std=STD)
    # The statistics alone change nothing: normalize=False keeps items in [0, 1].
    unused = image_folder_datamodule(root, dataset_kwargs=statistics)
    first_test = [next(iter(dm.episode_loader("test"))).query_x for dm in (unused, plain)]
    assert torch.equal(*first_test)
    assert stored_preprocessing({"EpisodicDataModule": unused.state_dict()}).mean is None


def test_normalisation_follows_the_augmentation(tmp_path):
    root = make_folders(tmp_path / "images")
    augmentation = EpisodeAugmentation(**{**NONE.__dict__, "brightness": 0.4})
    augmented = image_folder_datamodule(root, augmentation=augmentation)
    statistics = {"mean": MEAN, "std": STD}
    both = image_folder_datamodule(root, augmentation=augmentation, dataset_kwargs=statistics, normalize=True)
    a, b = next(iter(augmented.episode_loader("train"))), next(iter(both.episode_loader("train")))
    torch.testing.assert_close(b.support_x, normalised(a.support_x))


def test_normalize_without_published_statistics_names_the_dataset_and_the_fix():
    with pytest.raises(DatasetError) as error:
        EpisodicDataModule("glyphs", dataset_kwargs={"num_classes": 60, "drawings_per_class": 6}, normalize=True)
    assert str(error.value) == (
        "normalize=True but dataset 'glyphs' publishes no normalisation statistics "
        "(ProceduralGlyphs.normalization() returns None); set normalize=False, or use a dataset that has them "
        "(image_folder: give dataset_kwargs mean and std, one value per channel)"
    )


def test_image_folder_statistics_must_fit_its_mode(tmp_path):
    with pytest.raises(DatasetError, match=r"image_folder \(L images\): mean=\[0.4, 0.5, 0.6\] lists 3 values"):
        ImageFolder(tmp_path, mode="L", mean=MEAN, std=STD)
    assert ImageFolder(tmp_path, mean=MEAN, std=STD).normalization() == (MEAN, STD)
    assert ImageFolder(tmp_path).normalization() is None
    assert np.allclose(ImageFolder(tmp_path, mode="L", mean=[0.5], std=[0.25]).normalization(), ((0.5,), (0.25,)))
