"""``lit-meta embed``: a trained learner's features of every glyph, replayed as episodes of the ``features`` dataset."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_meta.backbones import Conv4
from lit_meta.cli import main
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import FeaturesDataset, ProceduralGlyphs
from lit_meta.data.episode import EpisodeBatch
from lit_meta.feature_export import HeadInput, embed_dataset, feature_network
from lit_meta.learners.base import MetaLearner
from lit_meta.learners.maml import MAML
from tests.cli.test_configs import QUICKSTART

GLYPHS = {"num_classes": 50, "drawings_per_class": 8}  # 40 / 5 / 5 classes
EPISODES = {"ways": 5, "shots": 2, "queries": 3, "meta_batch_size": 2, "seed": 7}
EPISODES.update(train_episodes=4, val_episodes=2, test_episodes=2)


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("glyphs")
    ProceduralGlyphs(root=str(root), **GLYPHS).prepare()
    return root


@pytest.fixture(scope="module")
def protonet_ckpt(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart ProtoNet meta-trained for two steps on the small glyphs through ``lit-meta fit``."""
    run = tmp_path_factory.mktemp("protonet")
    overrides = {
        "data.root": glyph_root,
        "data.dataset_kwargs": '{"num_classes": 50, "drawings_per_class": 8}',
        "data.train_ways": 5,
        "data.train_queries": 2,
        "data.queries": 2,
        "data.train_episodes": 2,
        "data.val_episodes": 1,
        "data.eval_meta_batch_size": 1,
        "trainer.max_steps": 2,
        "trainer.max_epochs": 1,
        "trainer.logger": "false",
        "trainer.num_sanity_val_steps": 0,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "trainer.default_root_dir": run,
        "test_after_fit": "false",
    }
    assert main(["fit", f"--config={QUICKSTART}", *(f"--{key}={value}" for key, value in overrides.items())]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def features_file(protonet_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written by ``lit-meta embed`` on the dataset the checkpoint records (no --dataset given)."""
    output = tmp_path_factory.mktemp("features") / "glyph_features.npz"
    assert main(["embed", f"--ckpt_path={protonet_ckpt}", f"--output={output}", "--device=cpu", "--batch_size=64"]) == 0
    return output


def batches(dataset: str, root: Path, **kwargs: object) -> dict[str, list[EpisodeBatch]]:
    datamodule = EpisodicDataModule(dataset, root=str(root), **EPISODES, **kwargs)  # type: ignore[arg-type]
    datamodule.setup()
    return {split: list(datamodule.episode_loader(split)) for split in ("train", "val", "test")}


def test_feature_episodes_are_the_backbone_applied_to_the_image_episodes(
    features_file: Path, protonet_ckpt: Path, glyph_root: Path
) -> None:
    learner = MetaLearner.load_from_checkpoint(protonet_ckpt, weights_only=True).eval()
    images = batches("glyphs", glyph_root, dataset_kwargs=GLYPHS)
    features = batches("features", features_file)
    with torch.no_grad():
        for split in images:
            for image_batch, feature_batch in zip(images[split], features[split], strict=True):
                assert torch.equal(feature_batch.classes, image_batch.classes)
                assert torch.equal(feature_batch.support_y, image_batch.support_y)
                assert torch.equal(feature_batch.query_y, image_batch.query_y)
                for items, vectors in ((image_batch.support_x, feature_batch.support_x), (image_batch.query_x,
                                       feature_batch.query_x)):  # fmt: skip
                    expected = learner.backbone(items.flatten(0, 1)).unflatten(0, items.shape[:2])
                    torch.testing.assert_close(vectors, expected, rtol=1e-4, atol=1e-5)


def test_splits_keep_the_image_datasets_classes(features_file: Path, protonet_ckpt: Path, glyph_root: Path) -> None:
    dataset = FeaturesDataset(features_file)
    glyphs = ProceduralGlyphs(root=str(glyph_root), **GLYPHS)
    ids = {}
    for split in ("train", "val", "test"):
        ours, theirs = dataset.split(split), glyphs.split(split)
        assert ours.class_ids.tolist() == theirs.class_ids.tolist()
        assert ours.class_names == theirs.class_names
        assert ours.class_sizes.tolist() == theirs.class_sizes.tolist()
        ids[split] = set(ours.class_ids.tolist())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    metadata = dataset.metadata
    assert metadata["learner"] == "lit_meta.learners.protonet.ProtoNet"
    assert metadata["checkpoint"] == str(protonet_ckpt.resolve())
    assert metadata["backbone"]["class_path"].endswith("Conv4")
    assert (metadata["dataset"], metadata["dataset_kwargs"]) == ("glyphs", GLYPHS)
    assert metadata["features"] == "backbone_output" and metadata["batch_norm"] == "running"


def test_summary_line_and_refusing_to_overwrite(
    features_file: Path, protonet_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "test_only.npz"
    args = ["embed", f"--ckpt_path={protonet_ckpt}", f"--output={output}", "--splits", "test", "val"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"embedded 80 items into 32 features (classes: val 5, test 5) -> {output} in "), line
    before = output.read_bytes()
    assert main(args) == 2
    assert f"error: {output} exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == before
    assert main([*args, "--splits", "test", "--overwrite"]) == 0
    assert not FeaturesDataset(output).has_split("val")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt_path=missing.ckpt"], "error: checkpoint missing.ckpt does not exist"),
        (["--dataset=mnist"], "error: unknown dataset 'mnist'; known datasets:"),
        (["--dataset_kwargs", '{"colour": true}'], "error: dataset 'glyphs' with dataset_kwargs {'colour': True}"),
    ],
    ids=["checkpoint", "dataset", "kwargs"],
)
def test_errors_are_one_line(
    extra: list[str], message: str, protonet_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["embed", f"--ckpt_path={protonet_ckpt}", f"--output={tmp_path / 'out.npz'}", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out.npz").exists()


def test_gradient_learners_give_head_inputs_normalised_with_train_split_statistics(glyph_root: Path) -> None:
    """MAML normalises with per-task batch statistics and never updates the running ones, so eval mode
    would normalise with the initial mean 0, variance 1; embedding uses the train split's statistics."""
    torch.manual_seed(0)
    learner = MAML(Conv4(1, out_features=5, hidden_channels=8), execution="loop")
    glyphs = ProceduralGlyphs(root=str(glyph_root), **GLYPHS)
    episodes = batches("glyphs", glyph_root, dataset_kwargs=GLYPHS)["train"][0]
    learner.meta_loss(episodes).backward()  # a meta-training step's forward and backward passes
    running = {name: value.clone() for name, value in learner.backbone.named_buffers()}
    assert all(int(value) == 0 for name, value in running.items() if name.endswith("num_batches_tracked"))

    network = feature_network(learner)
    assert isinstance(network, HeadInput)
    arrays = embed_dataset(network, glyphs, batch_size=10_000)  # the train split in one batch
    assert arrays.features.shape == (len(glyphs.dataset), 8)  # the head's 8 inputs, not its 5 logits
    assert arrays.metadata["batch_norm"] == "train_split"

    train = glyphs.split("train")
    items = train.load(np.arange(len(train)))
    with torch.no_grad():
        batch_statistics = copy.deepcopy(learner.backbone).train().features(items)
        initial_statistics = learner.backbone.eval().features(items)
    train_rows = torch.from_numpy(arrays.features[arrays.class_split[arrays.labels] == "train"])
    torch.testing.assert_close(train_rows, batch_statistics, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(train_rows, initial_statistics, atol=1e-2)
    # The learner's own network is untouched.
    assert all(torch.equal(value, running[name]) for name, value in learner.backbone.named_buffers())
