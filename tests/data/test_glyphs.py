"""Procedural glyphs: determinism, the disk cache, class splits and difficulty."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from lit_meta.data.datasets import DATASETS, build_dataset
from lit_meta.data.datasets import glyphs as glyphs_module
from lit_meta.data.datasets.base import SPLIT_NAMES
from lit_meta.data.datasets.glyphs import ProceduralGlyphs, generate_glyphs
from lit_meta.data.episode import EpisodeDataset
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape
from lit_meta.errors import DatasetError

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "glyphs_difficulty.py"


@pytest.fixture(scope="module")
def difficulty() -> ModuleType:
    """The baselines of ``benchmarks/glyphs_difficulty.py``, so tests and benchmark measure the same thing."""
    spec = importlib.util.spec_from_file_location("glyphs_difficulty", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def default_family(tmp_path_factory: pytest.TempPathFactory) -> ProceduralGlyphs:
    family = ProceduralGlyphs(root=str(tmp_path_factory.mktemp("glyphs")))
    family.prepare()
    return family


def test_generation_is_deterministic_in_the_seed() -> None:
    images, labels = generate_glyphs(30, drawings_per_class=4, image_size=28, seed=3)
    again, _ = generate_glyphs(30, drawings_per_class=4, image_size=28, seed=3)
    other, _ = generate_glyphs(30, drawings_per_class=4, image_size=28, seed=4)
    assert images.shape == (120, 1, 28, 28)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(30), 4))
    np.testing.assert_array_equal(images, again)
    assert (images != other).mean() > 0.05


def test_glyphs_are_bright_ink_on_black() -> None:
    images, _ = generate_glyphs(20, drawings_per_class=5, image_size=28, seed=0)
    ink = images.reshape(len(images), -1) / 255.0
    assert ink.max(axis=1).min() > 0.9  # every drawing has saturated strokes
    assert 0.05 < (ink > 0.5).mean() < 0.35  # strokes, not blobs or specks
    border = np.concatenate([images[:, 0, 0], images[:, 0, -1], images[:, 0, :, 0], images[:, 0, :, -1]], axis=1)
    assert (border == 0).mean() > 0.8  # mostly on the canvas


def test_generation_scales_to_other_image_sizes() -> None:
    images, _ = generate_glyphs(3, drawings_per_class=2, image_size=64, seed=0)
    assert images.shape == (6, 1, 64, 64)
    assert images.max() > 230


@pytest.mark.parametrize(("classes", "drawings", "size"), [(0, 20, 28), (5, 0, 28), (5, 20, 4)])
def test_generation_rejects_impossible_sizes(classes: int, drawings: int, size: int) -> None:
    with pytest.raises(DatasetError, match=r"must be|at least"):
        generate_glyphs(classes, drawings, size)


def test_default_family_has_1000_training_classes_of_20_drawings(default_family: ProceduralGlyphs) -> None:
    assert default_family.num_classes >= 1000
    data = default_family.dataset
    assert data.num_classes == default_family.num_classes
    assert set(data.class_sizes.tolist()) == {20}
    assert data.data.shape == (default_family.num_classes * 20, 1, 28, 28)
    assert data.data.dtype == torch.uint8
    sizes = {name: default_family.split(name).num_classes for name in SPLIT_NAMES}
    assert sizes == {"train": 1000, "val": 125, "test": 125}
    image, label = default_family.split("train")[0]
    assert image.shape == (1, 28, 28)
    assert image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert label == 0


def test_splits_are_disjoint_and_cover_every_class(default_family: ProceduralGlyphs) -> None:
    ids = {name: set(default_family.split(name).class_ids.tolist()) for name in SPLIT_NAMES}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(default_family.num_classes))


def test_episodes_never_mix_splits(default_family: ProceduralGlyphs) -> None:
    for name in SPLIT_NAMES:
        split = default_family.split(name)
        allowed = set(split.class_ids.tolist())
        sampler = EpisodeSampler(split, EpisodeShape(20, 5, 5), num_episodes=30, split=name, seed=0)
        loader = EpisodeDataset(split)
        for plan in sampler:
            episode = loader[plan]
            assert set(episode.classes.tolist()) <= allowed
            assert episode.support_x.shape == (100, 1, 28, 28)
            # A drawing's image is the family image of its class: nothing leaks from other splits.
            drawings = default_family.dataset.load(default_family.dataset.class_indices[int(episode.classes[0])])
            assert (drawings == episode.support_x[0]).flatten(1).all(1).any()


def test_second_construction_loads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ProceduralGlyphs(num_classes=40, root=str(tmp_path))
    first.prepare()
    assert first.cache_path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temporary file left behind

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(glyphs_module, "generate_glyphs", refuse)
    second = ProceduralGlyphs(num_classes=40, root=str(tmp_path))
    torch.testing.assert_close(second.dataset.data, first.dataset.data, rtol=0, atol=0)
    fresh, _ = generate_glyphs(40)  # the original, imported before the patch
    np.testing.assert_array_equal(second.dataset.data.numpy(), fresh)


def test_cache_name_holds_every_generation_argument(tmp_path: Path) -> None:
    base = ProceduralGlyphs(root=str(tmp_path)).cache_path
    changed = [
        ProceduralGlyphs(num_classes=1000, root=str(tmp_path)),
        ProceduralGlyphs(drawings_per_class=10, root=str(tmp_path)),
        ProceduralGlyphs(image_size=32, root=str(tmp_path)),
        ProceduralGlyphs(seed=1, root=str(tmp_path)),
    ]
    names = {base.name} | {family.cache_path.name for family in changed}
    assert len(names) == 5
    assert f"v{glyphs_module.FORMAT_VERSION}" in base.name
    # Splits, rotations and transforms act after generation and share the cache.
    assert ProceduralGlyphs(rotations=(0, 90), split_fractions=(0.6, 0.2, 0.2), root=str(tmp_path)).cache_path == base


def test_cache_directory_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIT_META_CACHE", str(tmp_path / "cache"))
    assert ProceduralGlyphs().cache_path.parent == tmp_path / "cache"
    monkeypatch.delenv("LIT_META_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ProceduralGlyphs().cache_path.parent == tmp_path / "home" / ".cache" / "lit_meta"


def test_corrupt_cache_is_a_clear_error(tmp_path: Path) -> None:
    family = ProceduralGlyphs(num_classes=10, root=str(tmp_path))
    family.cache_path.write_bytes(b"not an array")
    with pytest.raises(DatasetError, match="delete it to regenerate"):
        family.prepare()
    np.save(family.cache_path, np.zeros((3, 1, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="expected uint8"):
        family.prepare()


def test_rotations_make_new_classes_in_the_same_split(tmp_path: Path) -> None:
    plain = ProceduralGlyphs(num_classes=40, root=str(tmp_path))
    rotated = ProceduralGlyphs(num_classes=40, rotations=(0, 90, 180, 270), root=str(tmp_path))
    ids = {name: set(rotated.split(name).class_ids.tolist()) for name in SPLIT_NAMES}
    assert sum(len(v) for v in ids.values()) == 160
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    train, base = rotated.split("train"), plain.split("train")
    assert train.num_classes == 4 * base.num_classes
    # Item 4 * i + 1 is item i rotated by 90 degrees.
    torch.testing.assert_close(train[4 * 7 + 1][0], torch.rot90(base[7][0], 1, dims=(-2, -1)))


@pytest.mark.parametrize("rotations", [(0,), (0, 180)])
def test_transform_is_applied_to_every_item(tmp_path: Path, rotations: tuple[int, ...]) -> None:
    family = ProceduralGlyphs(num_classes=20, rotations=rotations, root=str(tmp_path), transform=lambda x: 1 - x)
    plain = ProceduralGlyphs(num_classes=20, rotations=rotations, root=str(tmp_path))
    torch.testing.assert_close(family.split("val")[3][0], 1 - plain.split("val")[3][0])


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="num_classes=0"):
        ProceduralGlyphs(num_classes=0, root=str(tmp_path))
    with pytest.raises(DatasetError, match="three fractions"):
        ProceduralGlyphs(split_fractions=(0.5, 0.5), root=str(tmp_path))  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="sum to 1"):
        ProceduralGlyphs(split_fractions=(0.5, 0.5, 0.5), root=str(tmp_path))
    with pytest.raises(DatasetError, match="unknown split"):
        ProceduralGlyphs(num_classes=10, root=str(tmp_path)).split("dev")  # type: ignore[arg-type]


def test_registered_as_glyphs(tmp_path: Path) -> None:
    assert DATASETS["glyphs"] is ProceduralGlyphs
    family = build_dataset("glyphs", root=str(tmp_path), num_classes=12)
    assert isinstance(family, ProceduralGlyphs)
    assert family.cache_path.parent == tmp_path


def _pixel_nn_accuracy(difficulty: ModuleType, family: ProceduralGlyphs, episodes: int) -> float:
    accuracy, _ = difficulty.evaluate(
        difficulty.pixel_classifier("euclidean", prototype=False),
        family.split("test"),
        EpisodeShape(5, 1, 15),
        episodes,
    )
    return accuracy / 100


def test_raw_pixels_do_not_solve_the_glyphs(tmp_path: Path, difficulty: ModuleType) -> None:
    # Half of 200 classes as meta-test classes, so 200 episodes see many different characters.
    family = ProceduralGlyphs(num_classes=200, split_fractions=(0.25, 0.25, 0.5), root=str(tmp_path))
    accuracy = _pixel_nn_accuracy(difficulty, family, episodes=200)
    # Measured 0.40 (chance 0.20): above chance, far below what learning reaches (0.84 in the slow test).
    assert 0.25 < accuracy < 0.6, f"pixel 1-NN 5-way 1-shot accuracy {accuracy:.3f}"


@pytest.mark.slow
def test_a_trained_protonet_beats_raw_pixels_by_far(tmp_path: Path, difficulty: ModuleType) -> None:
    family = ProceduralGlyphs(num_classes=500, split_fractions=(0.8, 0.0, 0.2), root=str(tmp_path))
    pixels = _pixel_nn_accuracy(difficulty, family, episodes=200)
    net = difficulty.train_protonet(family.split("train"), EpisodeShape(10, 5, 5), steps=150)
    learned, _ = difficulty.evaluate(
        difficulty.protonet_classifier(net), family.split("test"), EpisodeShape(5, 1, 15), 200
    )
    # Measured 0.84 vs 0.38 after about a minute of CPU training.
    assert learned / 100 > pixels + 0.3, f"ProtoNet {learned / 100:.3f} vs pixel 1-NN {pixels:.3f}"
