"""The YAMLs under ``configs/`` and the command line around them.

Every config runs through ``lit-meta fit``, ``test`` and ``adapt`` in the registry's
contract test (``tests/test_contract.py``), on embedded data: Omniglot configs run on
the procedural glyphs (also ``[1, 28, 28]`` images, 1,000 meta-train classes of 20
drawings), configs on pre-computed features (``dataset: features``) on features of
the glyphs (:func:`glyph_features`), configs on ``dataset: image_folder`` on a folder of
random images for every class they list (:func:`image_folder_root`), and configs on the
published image benchmarks (``miniimagenet``, ``cifar_fs``, ``fc100``) on miniatures of their
files in that folder, read by the real families (:func:`write_benchmark_miniatures`), so nothing
is downloaded.
The helpers for that live here; the tests here check what the configs promise beyond a run
(episodes that fit Omniglot's 20 drawings, learners sized for the benchmarks' images, the help
text, errors for misspelled keys).
"""

from __future__ import annotations

import hashlib
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lit_meta.backbones.koch import KochSiameseNet
from lit_meta.backbones.mlp import MLP
from lit_meta.cli import MetaLearningCLI, main
from lit_meta.data.affine import AffineDistortion
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, FeaturesDataset, Omniglot, ProceduralGlyphs
from lit_meta.feature_export import embed_dataset
from lit_meta.learners import registered_learners

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
OMNIGLOT_DRAWINGS = 20
"""Drawings of each Omniglot character, so at most ``shots + queries`` per class of an episode."""


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The datamodule's arguments, whether ``data:`` holds them directly or under ``init_args``."""
    data = config.get("data") or {}
    return data.get("init_args", data)


def config_id(path: Path) -> str:
    return path.relative_to(CONFIG_DIR).as_posix()


OMNIGLOT_CONFIGS = [path for path in CONFIGS if data_args(load(path)).get("dataset") == "omniglot"]
IMAGE_FOLDER_CONFIGS = [path for path in CONFIGS if data_args(load(path)).get("dataset") == "image_folder"]
IMAGE_FOLDER_IMAGES = 6
"""Images of every generated class folder: a 5-shot episode plus the contract run's one query."""
BENCHMARK_IMAGE_SIZES = {name: DATASETS[name].DEFAULT_IMAGE_SIZE for name in ("miniimagenet", "cifar_fs", "fc100")}
"""The published image benchmarks that configs name, with the side of their RGB images (the papers'
size, each family's default ``image_size``)."""
BENCHMARK_CONFIGS = [path for path in CONFIGS if data_args(load(path)).get("dataset") in BENCHMARK_IMAGE_SIZES]

# Reptile adapts for 50 steps per evaluated 20-way episode: 10-25 s each on 2 cores. The configs
# on miniImageNet (84x84, or 640-d features), CIFAR-FS and FC100 (32x32) run the learners of the
# Omniglot configs on bigger images: 4-15 s each on 2 busy cores (Matching Networks' full context
# embeddings of 1,600-d features about 90 s, SNAIL on ResNet-12 about 40 s), covered by the default
# run through their Omniglot twins, except one run at each image size (DEFAULT_BENCHMARK_RUNS), which
# keeps the benchmarks' miniatures (write_benchmark_miniatures) in the default run.
DEFAULT_BENCHMARK_RUNS = {"fomaml/miniimagenet_5w1s.yaml", "protonet/fc100_5w1s.yaml"}
# Koch et al.'s Siamese network on 105x105 images: 28 s (5-way) and 45 s (20-way) on 2 busy cores, of
# which 7 s make the 105x105 glyphs; SiameseNet stays in the default run through its Conv4 configs, and
# test_koch_configs_build_the_papers_network_and_distortions checks what the Koch configs add.
KOCH_CONFIGS = {"siamese/omniglot_koch_5w1s.yaml", "siamese/omniglot_koch_20w1s.yaml"}
SLOW = (
    {"reptile/omniglot_20w1s.yaml", "reptile/omniglot_20w5s.yaml", "metanet/omniglot_20w1s.yaml"}
    | KOCH_CONFIGS
    | {config_id(path) for path in CONFIGS if path.name.startswith("miniimagenet") or path in BENCHMARK_CONFIGS}
    - DEFAULT_BENCHMARK_RUNS
)


def benchmark_image_size(data: dict[str, Any]) -> int:
    """The image size of a benchmark config's dataset: its ``dataset_kwargs`` ``image_size``, else the family's."""
    return int((data.get("dataset_kwargs") or {}).get("image_size") or BENCHMARK_IMAGE_SIZES[data["dataset"]])


def write_benchmark_miniatures(root: Path) -> str:
    """Miniatures of the published benchmarks that configs name, in ``root``; returns the CIFAR archive's md5.

    ``root/miniimagenet/<wnid>/<i>.png`` for all 100 classes of Ravi & Larochelle's split (MAML's
    class-folder form), and ``root/cifar100/cifar-100-python.tar.gz``, CIFAR-100's python release
    with all 100 classes, :data:`IMAGE_FOLDER_IMAGES` random images each. The real families read
    them (resized to each config's size); a test accepts the archive by patching the release's md5
    to the returned one (:func:`accept_cifar100_miniature`).
    """
    from lit_meta.data.datasets.miniimagenet import ravi_split
    from tests.data.test_cifar100_benchmarks import FINE_NAMES, cifar100_archive, cifar100_members

    generator = np.random.default_rng(1)
    for rows in ravi_split().values():
        for wnid in dict.fromkeys(label for _, label in rows):
            (root / "miniimagenet" / wnid).mkdir(parents=True)
            for i in range(IMAGE_FOLDER_IMAGES):
                pixels = generator.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "miniimagenet" / wnid / f"{i}.png")
    archive = cifar100_archive(cifar100_members(tuple(FINE_NAMES)))
    (root / "cifar100").mkdir()
    (root / "cifar100" / "cifar-100-python.tar.gz").write_bytes(archive)
    return hashlib.md5(archive).hexdigest()


def accept_cifar100_miniature(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make CIFAR-FS and FC100 accept the miniature archive of :func:`write_benchmark_miniatures` in ``root``."""
    from lit_meta.data.datasets import cifar100

    archive = root / "cifar100" / "cifar-100-python.tar.gz"
    monkeypatch.setattr(cifar100, "CIFAR100_ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One glyph cache for the session: the images are generated once (~3 s), not per config."""
    root = tmp_path_factory.mktemp("glyphs")
    ProceduralGlyphs(root=str(root)).prepare()
    return root


@pytest.fixture(scope="session")
def image_folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the session's ``image_folder`` configs: ``<class>/<i>.png`` for every class they list,
    and the benchmarks' miniatures (:func:`write_benchmark_miniatures`).

    Each class folder named in a config's ``dataset_kwargs`` (``train_classes``, ``val_classes``,
    ``test_classes``) holds :data:`IMAGE_FOLDER_IMAGES` random 16x16 RGB images; the dataset resizes them to the
    config's ``image_size``.
    """
    root = tmp_path_factory.mktemp("image_folder")
    classes = {
        name
        for path in IMAGE_FOLDER_CONFIGS
        for key in ("train_classes", "val_classes", "test_classes")
        for name in (data_args(load(path)).get("dataset_kwargs") or {}).get(key) or ()
    }
    generator = np.random.default_rng(0)
    for name in sorted(classes):
        (root / name).mkdir()
        for i in range(IMAGE_FOLDER_IMAGES):
            Image.fromarray(generator.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    write_benchmark_miniatures(root)
    return root


FEATURE_DIM = 64
"""Size of the glyph features configs on ``dataset: features`` run with, unless the learner's
``embedding_dim`` asks for another (a Conv4 embeds 28x28 images in 64)."""


def glyph_features(glyph_root: Path, config: dict[str, Any] | None = None) -> Path:
    """A features file of the session's glyphs, for a config whose dataset is ``features``: made on first use.

    The vectors are as wide as the config's learner says (``model.init_args.embedding_dim``),
    else :data:`FEATURE_DIM`. The "backbone" is a random projection of the pixels followed by
    a ReLU (an MLP with one hidden layer), which embeds the 25,000 glyphs in about a second;
    a random Conv4 takes many.
    """
    dim = int(((config or {}).get("model", {}).get("init_args") or {}).get("embedding_dim") or FEATURE_DIM)
    path = glyph_root / f"features-{dim}.npz"
    if not path.is_file():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            network = MLP(28 * 28, hidden=[dim], out_features=None)
        embed_dataset(network, ProceduralGlyphs(root=str(glyph_root)), batch_size=4096).save(path)
    return path


def test_glyph_features_serve_the_glyph_splits(glyph_root: Path) -> None:
    features, glyphs = FeaturesDataset(glyph_features(glyph_root)), ProceduralGlyphs(root=str(glyph_root))
    assert features.feature_dim == FEATURE_DIM
    for split in ("train", "val", "test"):
        assert features.split(split).class_ids.tolist() == glyphs.split(split).class_ids.tolist()


def glyph_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    """The config's ``dataset_kwargs`` for Omniglot, checked, less those the glyphs do not take.

    ``dataset_kwargs`` is a free dict that jsonargparse cannot check, so its keys are
    checked against Omniglot here.
    """
    kwargs = data.get("dataset_kwargs") or {}
    inspect.signature(Omniglot).bind(**kwargs)
    glyph_parameters = inspect.signature(ProceduralGlyphs).parameters
    return {key: value for key, value in kwargs.items() if key in glyph_parameters}


@pytest.mark.parametrize("path", OMNIGLOT_CONFIGS, ids=config_id)
def test_omniglot_episodes_fit_the_characters(path: Path, tmp_path: Path) -> None:
    """The runs above use one query per class; the configured episodes must fit 20 drawings."""
    data = {key: value for key, value in data_args(load(path)).items() if key != "dataset_kwargs"}
    datamodule = EpisodicDataModule(**{**data, "dataset": "glyphs", "root": str(tmp_path)})
    for split, shape in datamodule.shapes.items():
        assert shape.shots + shape.queries <= OMNIGLOT_DRAWINGS, (split, shape)


def test_default_benchmark_runs_name_benchmark_configs() -> None:
    unknown = DEFAULT_BENCHMARK_RUNS - {config_id(path) for path in BENCHMARK_CONFIGS}
    assert not unknown, f"DEFAULT_BENCHMARK_RUNS names no benchmark config: {sorted(unknown)}"


@pytest.mark.parametrize("path", BENCHMARK_CONFIGS, ids=config_id)
def test_benchmark_configs_size_their_learners_for_the_images(path: Path) -> None:
    """A config on miniImageNet (84x84), CIFAR-FS or FC100 (32x32) builds its networks for RGB images of that size."""
    config = load(path)
    data, model = data_args(config), config["model"]["init_args"]
    size = benchmark_image_size(data)
    assert size == BENCHMARK_IMAGE_SIZES[data["dataset"]], (data["dataset"], size)
    assert data.get("root") == "data"
    backbone = model["backbone"]["init_args"]
    assert backbone["in_channels"] == 3, backbone
    assert backbone.get("image_size", size) == size, backbone
    assert list(model.get("input_shape", [3, size, size])) == [3, size, size], model.get("input_shape")


def test_quickstart_is_found() -> None:
    assert QUICKSTART in CONFIGS


def test_help_lists_learners_and_datasets() -> None:
    exe = Path(sys.executable).with_name("lit-meta")
    if not exe.is_file():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, timeout=120).stdout
    # lit-meta's own learners: this process also registered the subclasses other tests define.
    own = {cls.__name__ for path, cls in registered_learners().items() if path.startswith("lit_meta.")}
    for name in [*sorted(own), *DATASETS]:
        assert name in out


@pytest.mark.parametrize(
    ("section", "key", "typo"),
    [("model", "lr_schedule", "lr_schedul"), ("data", "ways", "wayz"), ("trainer", "max_epochs", "max_epoch")],
)
def test_misspelled_key_names_the_valid_ones(
    section: str, key: str, typo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load(QUICKSTART)
    arguments = config[section]["init_args"] if section == "model" else config[section]
    where = {
        "model": f"{config['model']['class_path']} arguments",
        "data": "lit_meta.EpisodicDataModule arguments",
        "trainer": "trainer options",
    }[section]
    arguments[typo] = arguments.pop(key)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", f"--config={path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and typo in err and f"Did you mean '{key}'?" in err, err
    valid = err.split(f"Valid {where}: ", 1)[1].splitlines()[0].split(", ")
    assert key in valid
    assert typo not in valid


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", f"--config={QUICKSTART}", "--print_config"]) == 0
    printed, source = yaml.safe_load(capsys.readouterr().out), load(QUICKSTART)
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    assert printed["model"]["init_args"]["meta_lr"] == source["model"]["init_args"]["meta_lr"]
    assert data_args(printed)["ways"] == data_args(source)["ways"]
    assert printed["test_after_fit"] is True


@pytest.mark.parametrize("name", sorted(KOCH_CONFIGS))
def test_koch_configs_build_the_papers_network_and_distortions(name: str, tmp_path: Path) -> None:
    """The faithful Siamese configs (slow to run, see SLOW) parse to the paper's network, images and distortions."""
    path = CONFIG_DIR / name
    args = ["--config", str(path), "--data.dataset=glyphs", f"--data.root={tmp_path}", "--data.dataset_kwargs=null"]
    cli = MetaLearningCLI(args=[*args, "--trainer.logger=false"], run=False)
    assert isinstance(cli.model.backbone, KochSiameseNet) and cli.model.backbone.embedding_dim == 4096
    assert cli.model.backbone.init_config["init_args"]["image_size"] == 105
    assert data_args(load(path))["dataset_kwargs"]["image_size"] == 105
    assert cli.datamodule.augmentation == AffineDistortion()  # the paper's ranges and probability
    assert (cli.model.hparams.meta_optimizer, cli.model.hparams.lr_schedule) == ("sgd", "step")
