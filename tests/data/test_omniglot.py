"""Omniglot from a tiny generated release in the original layout, and checks on the real one."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from importlib.resources import files as package_files
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, Omniglot, build_dataset
from lit_meta.data.datasets import omniglot as omniglot_module
from lit_meta.data.datasets.omniglot import vinyals_split
from lit_meta.data.episode import EpisodeBatch, EpisodeDataset
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape
from lit_meta.errors import ChecksumError, DatasetError
from tests.conftest import omniglot_dir

# Alphabet -> number of characters; ids count up from 0001 through both sets, as in the release.
# Alphabets and sets as in the real release, so the published "vinyals" lists apply: Arcadian,
# Tagalog, Blackfoot and Angelic characters are meta-train, Bengali meta-val, ULOG meta-test.
BACKGROUND = {"Arcadian": 3, "Tagalog": 2, "Blackfoot_(Canadian_Aboriginal_Syllabics)": 1, "Bengali": 2}
EVALUATION = {"Angelic": 3, "ULOG": 2}
DRAWERS = 3
NUM_CHARACTERS = sum(BACKGROUND.values()) + sum(EVALUATION.values())


def _drawing_png(char_id: int, drawer: int) -> bytes:
    """A 105x105 1-bit PNG, black ink on white, asymmetric and different for every drawing."""
    image = Image.new("1", (105, 105), color=1)
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 30 + 3 * char_id, 20 + 2 * drawer), fill=0)
    draw.line((60, 70, 95, 70 + char_id), fill=0, width=4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_set(
    path: Path, name: str, alphabets: dict[str, int], first_id: int, broken: str | None = None, drawers: int = DRAWERS
) -> int:
    """Write one set's zip in the original layout; ``broken`` names a member to fill with garbage."""
    char_id = first_id
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/", b"")
        for alphabet, count in alphabets.items():
            archive.writestr(f"{name}/{alphabet}/", b"")
            for number in range(1, count + 1):
                folder = f"{name}/{alphabet}/character{number:02d}"
                archive.writestr(f"{folder}/", b"")
                for drawer in range(1, drawers + 1):
                    member = f"{folder}/{char_id:04d}_{drawer:02d}.png"
                    archive.writestr(member, b"not a png" if member == broken else _drawing_png(char_id, drawer))
                char_id += 1
    return char_id


def make_release(
    folder: Path,
    broken: str | None = None,
    drawers: int = DRAWERS,
    background: dict[str, int] = BACKGROUND,
    evaluation: dict[str, int] = EVALUATION,
) -> Path:
    """Both zips of a tiny release in ``folder`` (``drawers`` drawings per character); returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    next_id = _write_set(folder / "images_background.zip", "images_background", background, 1, broken, drawers)
    _write_set(folder / "images_evaluation.zip", "images_evaluation", evaluation, next_id, broken, drawers)
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_release(tmp_path / "data" / "omniglot")
    return tmp_path / "data"


def _omniglot(root: Path, **kwargs) -> Omniglot:
    """A miniature release's dataset: the published lists name many more characters than it has."""
    kwargs.setdefault("allow_partial", True)
    return Omniglot(root, download=False, **kwargs)


def test_registered() -> None:
    assert DATASETS["omniglot"] is Omniglot
    assert isinstance(build_dataset("omniglot", root="somewhere"), Omniglot)


def test_characters_drawings_and_ink(root: Path) -> None:
    characters = _omniglot(root).characters
    assert characters.num_classes == NUM_CHARACTERS
    assert len(characters) == NUM_CHARACTERS * DRAWERS
    assert characters.class_sizes.tolist() == [DRAWERS] * NUM_CHARACTERS
    assert characters.class_ids.tolist() == list(range(NUM_CHARACTERS))  # global id - 1
    assert characters.class_names[:4] == [
        "Arcadian/character01",
        "Arcadian/character02",
        "Arcadian/character03",
        "Tagalog/character01",
    ]
    assert characters.data.dtype == torch.uint8
    assert characters.data.shape == (NUM_CHARACTERS * DRAWERS, 1, 28, 28)
    first = characters.data[0, 0]
    assert first[0, 0] == 0, "background must be dark"
    assert first[4, 4] > 200, "ink must be bright"
    # Drawings are in drawer order: the rectangle grows with the drawer number.
    ink = characters.data[:DRAWERS].float().sum(dim=(1, 2, 3))
    assert torch.all(ink[1:] > ink[:-1])


@pytest.mark.parametrize(
    ("scheme", "sizes"),
    [
        ("vinyals", {"train": 9, "val": 2, "test": 2}),
        ("seeded", {"train": 9, "val": 1, "test": 3}),
        ("lake", {"train": 5, "val": 3, "test": 5}),
    ],
)
def test_splits_are_disjoint_by_character(root: Path, scheme: str, sizes: dict[str, int]) -> None:
    omniglot = _omniglot(root, split=scheme)
    characters: dict[str, set[int]] = {}
    for name, size in sizes.items():
        split = omniglot.split(name)
        assert split.num_classes == 4 * size
        assert len(split) == 4 * size * DRAWERS
        characters[name] = set((split.class_ids // 4).tolist())
        assert len(characters[name]) == size
        assert len(set(split.class_ids.tolist())) == split.num_classes
    assert not characters["train"] & characters["val"]
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]
    assert set.union(*characters.values()) == set(range(NUM_CHARACTERS))


def test_lake_split_follows_sets_and_alphabets(root: Path) -> None:
    omniglot = _omniglot(root, split="lake", rotations=(0,))
    names = {name: omniglot.split(name).class_names for name in ("train", "val", "test")}
    assert {n.split("/")[0] for n in names["train"]} == {"Arcadian", "Bengali"}
    assert {n.split("/")[0] for n in names["val"]} == {"Tagalog", "Blackfoot_(Canadian_Aboriginal_Syllabics)"}
    assert {n.split("/")[0] for n in names["test"]} == set(EVALUATION)


def test_seeded_split_is_fixed(root: Path) -> None:
    first = _omniglot(root, split="seeded").split_classes()
    second = _omniglot(root, split="seeded").split_classes()
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.parametrize("precompute_rotations", [True, False])
def test_rotations_are_new_classes_of_rotated_pixels(root: Path, precompute_rotations: bool) -> None:
    rotated = _omniglot(root, precompute_rotations=precompute_rotations).split("train")
    plain = _omniglot(root, rotations=(0,)).split("train")
    assert plain.num_classes * 4 == rotated.num_classes
    np.testing.assert_array_equal(rotated.class_ids, (plain.class_ids[:, None] * 4 + np.arange(4)).reshape(-1))
    for quarter_turns in range(4):
        items = rotated.load(np.flatnonzero(rotated.labels % 4 == quarter_turns))
        expected = torch.rot90(plain.load(np.arange(len(plain))), quarter_turns, dims=(-2, -1))
        torch.testing.assert_close(items, expected)
        if quarter_turns:
            assert not torch.equal(items, plain.load(np.arange(len(plain))))
    assert rotated.class_names[1].endswith("/rot90")


@pytest.mark.parametrize("rotations", [(0,), (0, 90, 180, 270)])
def test_transform_applies_to_split_items(root: Path, rotations: tuple[int, ...]) -> None:
    split = _omniglot(root, rotations=rotations, transform=lambda x: torch.full_like(x, 0.5)).split("test")
    assert torch.all(split.load(np.arange(4)) == 0.5)


def test_episodes_from_a_split(root: Path) -> None:
    split = _omniglot(root).split("train")
    sampler = EpisodeSampler(split, EpisodeShape(ways=5, shots=1, queries=2), num_episodes=3)
    episode = EpisodeDataset(split)[next(iter(sampler))]
    assert episode.support_x.shape == (5, 1, 28, 28)
    assert episode.query_x.shape == (10, 1, 28, 28)


def test_image_size(root: Path) -> None:
    assert _omniglot(root, image_size=14).split("val").load(np.arange(2)).shape == (2, 1, 14, 14)


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def decode(data: bytes, *args, name: str = "", **kwargs):
        calls.append(name)
        raise AssertionError(f"decoded {name} although a cache should have been used")

    monkeypatch.setattr(omniglot_module, "decode_image", decode)
    return calls


def test_cache_is_reused_and_keyed(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _omniglot(root).characters
    cache = root / "omniglot" / "omniglot_28px.npz"
    assert cache.is_file()
    calls = _forbid_decoding(monkeypatch)
    second = _omniglot(root).characters
    assert not calls
    torch.testing.assert_close(first.data, second.data)
    assert first.class_names == second.class_names
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.class_ids, second.class_ids)
    with pytest.raises(AssertionError, match="decoded"):
        _omniglot(root, image_size=20).characters  # another size: not in the cache
    source = root / "omniglot" / "images_evaluation.zip"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded"):
        _omniglot(root).characters  # changed source: the cache is stale


def test_cache_dir_and_cache_off(root: Path, tmp_path: Path) -> None:
    _omniglot(root, cache_dir=tmp_path / "cache").characters
    assert (tmp_path / "cache" / "omniglot_28px.npz").is_file()
    assert not (root / "omniglot" / "omniglot_28px.npz").exists()
    _omniglot(root, cache=False).characters
    assert not (root / "omniglot" / "omniglot_28px.npz").exists()


def test_unreadable_cache_is_rebuilt(root: Path) -> None:
    cache = root / "omniglot" / "omniglot_28px.npz"
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable Omniglot cache"):
        characters = _omniglot(root).characters
    assert characters.num_classes == NUM_CHARACTERS
    assert _omniglot(root).characters.num_classes == NUM_CHARACTERS  # rewritten, no warning


def test_extracted_folders_and_files_directly_in_root(root: Path, tmp_path: Path) -> None:
    expected = _omniglot(root, cache=False).characters
    extracted = tmp_path / "extracted"
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / "omniglot" / f"{name}.zip") as archive:
            archive.extractall(extracted / "omniglot")
    (extracted / "omniglot" / "images_background" / ".DS_Store").write_bytes(b"ignored")
    from_folders = _omniglot(extracted).characters
    torch.testing.assert_close(from_folders.data, expected.data)
    assert from_folders.class_names == expected.class_names
    direct = _omniglot(root / "omniglot", cache=False).characters  # root is the folder holding the zips
    torch.testing.assert_close(direct.data, expected.data)


def test_missing_files_name_the_paths_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="download=True") as info:
        _omniglot(tmp_path).split("train")
    assert str(tmp_path / "omniglot" / "images_background.zip") in str(info.value)
    assert str(tmp_path / "omniglot" / "images_evaluation.zip") in str(info.value)
    with pytest.raises(DatasetError, match="images_evaluation"):
        _omniglot(tmp_path).prepare()


def test_corrupt_zip_is_named(root: Path) -> None:
    archive = root / "omniglot" / "images_background.zip"
    archive.write_bytes(b"this is not a zip")
    with pytest.raises(DatasetError, match="not a readable zip archive") as info:
        _omniglot(root).characters
    assert str(archive) in str(info.value)


def test_damaged_member_is_named(root: Path) -> None:
    archive = root / "omniglot" / "images_evaluation.zip"
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".png"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start : start + 8] = bytes(8)  # clobber the compressed stream: a CRC or zlib error on read
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt") as error:
        _omniglot(root).characters
    assert info.filename in str(error.value)


def test_unreadable_png_is_named(tmp_path: Path) -> None:
    member = "images_evaluation/ULOG/character02/0013_02.png"
    make_release(tmp_path / "omniglot", broken=member)
    with pytest.raises(DatasetError, match="cannot decode image") as info:
        _omniglot(tmp_path).characters
    assert f"images_evaluation.zip::{member}" in str(info.value)


def test_unknown_split_scheme(root: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"unknown Omniglot split 'random'; use 'vinyals' .*'lake' .*'santoro' .*'seeded'"
    ):
        Omniglot(root, split="random")  # type: ignore[arg-type]


# -- the Santoro et al. (2016) split: no validation characters ----------------------------
def test_santoro_split_is_vinyals_test_and_the_rest_for_training(root: Path) -> None:
    # The published lists put 9 / 2 / 2 of the 13 characters in train / val / test, so santoro has
    # 11 / 0 / 2 (1200 / 0 / 423 in full).
    santoro, vinyals = _omniglot(root, split="santoro"), _omniglot(root)
    groups, vinyals_groups = santoro.split_classes(), vinyals.split_classes()
    assert [len(groups[name]) for name in ("train", "val", "test")] == [11, 0, 2]
    np.testing.assert_array_equal(groups["test"], vinyals_groups["test"])
    np.testing.assert_array_equal(groups["train"], np.union1d(vinyals_groups["train"], vinyals_groups["val"]))
    train, test = santoro.split("train"), santoro.split("test")
    assert (train.num_classes, test.num_classes) == (4 * 11, 4 * 2)
    assert len(train) == 4 * 11 * DRAWERS and len(test) == 4 * 2 * DRAWERS
    train_chars, test_chars = set((train.class_ids // 4).tolist()), set((test.class_ids // 4).tolist())
    assert not train_chars & test_chars and train_chars | test_chars == set(range(NUM_CHARACTERS))
    assert [santoro.has_split(name) for name in ("train", "val", "test")] == [True, False, True]
    assert all(vinyals.has_split(name) for name in ("train", "val", "test"))


def test_santoro_has_no_val_split_and_says_why(tmp_path: Path) -> None:
    # Refused by the scheme alone, before any file is looked for.
    with pytest.raises(DatasetError, match=r"split='santoro' has no val characters.*Use split='vinyals'"):
        _omniglot(tmp_path / "nowhere", split="santoro").split("val")


def test_an_empty_split_of_a_partial_release_is_still_an_incomplete_release(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Omniglot, "VINYALS_SIZES", (1600, 1, 22))  # 13 characters: no val character
    with pytest.raises(DatasetError, match=r"'seeded' val split of Omniglot .* holds no characters.*incomplete"):
        _omniglot(root, split="seeded").split("val")
    without_val = {"background": {"Arcadian": 2}, "evaluation": {"ULOG": 2}}
    make_release(root.parent / "no_val" / "omniglot", **without_val)
    with pytest.raises(DatasetError, match=r"'vinyals' val split of Omniglot .* holds no characters.*incomplete"):
        _omniglot(root.parent / "no_val").split("val")


# -- the published split of Vinyals et al. (2016) / Snell et al. (2017) ----------------------
def _published_lines(name: str) -> list[str]:
    path = package_files("lit_meta.data").joinpath("splits", "omniglot_vinyals", f"{name}.txt")
    return path.read_text(encoding="utf-8").splitlines()


def _as_list_line(class_name: str) -> str:
    """``"Alphabet/character01/rot90"`` (a rotated class's name) as the lists write it, ``.../rot090``."""
    character, _, angle = class_name.rpartition("/rot")
    return f"{character}/rot{int(angle):03d}" if character else f"{class_name}/rot000"


def test_published_lists_are_shipped_with_their_counts() -> None:
    lines = {name: _published_lines(name) for name in ("train", "val", "test", "trainval")}
    assert {name: len(found) for name, found in lines.items()} == {
        "train": 4112,
        "val": 688,
        "test": 1692,
        "trainval": 4800,
    }
    assert lines["trainval"] == lines["train"] + lines["val"]
    characters = {name: {line.rsplit("/", 1)[0] for line in lines[name]} for name in ("train", "val", "test")}
    assert [len(characters[name]) for name in ("train", "val", "test")] == [1028, 172, 423]
    assert not characters["train"] & characters["val"]
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]
    for name in ("train", "val", "test"):  # every character with its four rotations, once each
        assert sorted(lines[name]) == sorted(f"{c}/rot{a:03d}" for c in characters[name] for a in (0, 90, 180, 270))
    published = vinyals_split()
    assert len(published) == 1623
    assert all(published[c] == name for name in ("train", "val", "test") for c in characters[name])
    source = package_files("lit_meta.data").joinpath("splits", "omniglot_vinyals", "SOURCE.md").read_text()
    assert "Copyright (c) 2017 Jake Snell" in source and "c9bb4d258267c11cb6e23f0a19242d24ca98ad8a" in source


@pytest.mark.parametrize("rotations", [(0, 90, 180, 270), (0,), (90, 270)])
def test_default_split_follows_the_published_lists(root: Path, rotations: tuple[int, ...]) -> None:
    omniglot = _omniglot(root, rotations=rotations)
    assert omniglot.split_scheme == "vinyals"
    published = vinyals_split()
    names = omniglot.characters.class_names
    for name in ("train", "val", "test"):
        split = omniglot.split(name)
        # Each character in the split its list names, with the rotation classes asked for.
        expected = sorted(f"{c}/rot{a:03d}" for c in names if published[c] == name for a in rotations)
        assert sorted(_as_list_line(n) for n in split.class_names) == expected
        assert set(expected) <= set(_published_lines(name))
        assert len(split) == len(expected) * DRAWERS
    assert [n for n in names if published[n] == "val"] == ["Bengali/character01", "Bengali/character02"]
    assert [n for n in names if published[n] == "test"] == ["ULOG/character01", "ULOG/character02"]


@pytest.mark.parametrize("split", ["vinyals", "santoro"])
def test_release_lacking_listed_characters_is_refused(root: Path, split: str) -> None:
    with pytest.raises(DatasetError) as info:
        Omniglot(root, split=split, download=False).split("train")  # type: ignore[arg-type]
    message = str(info.value)
    assert f"lacks {1623 - NUM_CHARACTERS} of the 1623 characters" in message
    assert f"published split={split!r} lists" in message
    assert "e.g. Alphabet_of_the_Magi/character01, Alphabet_of_the_Magi/character02" in message
    assert str(root / "omniglot" / "images_background.zip") in message and "prepare()" in message
    assert "allow_partial=True" in message
    # The schemes that do not use the lists take a partial release as it is.
    assert Omniglot(root, split="seeded", download=False).split("train").num_classes == 4 * 9


def test_characters_the_lists_do_not_name_are_refused(tmp_path: Path) -> None:
    make_release(tmp_path / "omniglot", background={"Arcadian": 2, "Klingon": 1})
    with pytest.raises(DatasetError, match=r"1 characters .* not named in the published split lists \(e\.g\. Klingon/"):
        _omniglot(tmp_path).split("train")
    with pytest.raises(DatasetError, match=r"Use split='seeded' or 'lake'"):
        _omniglot(tmp_path, split="santoro").split("test")


class _Prototypes(L.LightningModule):
    """Nearest prototype on a linear embedding of 20x20 images; counts validation steps."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(400, 8)
        self.validation_steps = 0
        self.test_classes: set[int] = set()

    def _loss(self, batch: EpisodeBatch) -> torch.Tensor:
        support = self.embed(batch.support_x.flatten(2))
        one_hot = torch.nn.functional.one_hot(batch.support_y, batch.ways).float()
        prototypes = one_hot.transpose(1, 2) @ support / one_hot.sum(1).unsqueeze(-1)  # any support order
        logits = -torch.cdist(self.embed(batch.query_x.flatten(2)), prototypes)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self.validation_steps += 1

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self.test_classes |= set(batch.classes.flatten().tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("error::UserWarning", "ignore:.*does not have many workers.*")
def test_santoro_datamodule_trains_and_tests_without_validation(root: Path) -> None:
    omniglot = _omniglot(root, split="santoro", image_size=20)
    dm = EpisodicDataModule(
        omniglot,
        ways=5,
        shots=1,
        queries=1,
        meta_batch_size=2,
        train_episodes=8,
        test_episodes=4,
        support_order="random",
    )
    model = _Prototypes()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, dm)  # without a warning about an empty val loader
    assert trainer.global_step == 2 and model.validation_steps == 0
    assert dm.empty_splits == {"val"} and set(dm.samplers) == {"train"}
    trainer.test(model, dm)
    assert {c // 4 for c in model.test_classes} <= set(omniglot.split_classes()["test"].tolist())
    with pytest.raises(DatasetError, match=r"no val episodes: Omniglot\(.*split='santoro'"):
        dm.episode_loader("val")


# -- download -------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server of a generated release: (base URL, served folder)."""
    served = make_release(tmp_path / "served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _resources(served: Path, checksums: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    resources = {}
    for name, (url, _) in Omniglot.resources.items():
        md5 = hashlib.md5((served / f"{name}.zip").read_bytes()).hexdigest()
        resources[name] = (url, (checksums or {}).get(name, f"md5:{md5}"))
    return resources


def test_prepare_downloads_from_mirror(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, served = server
    (served / "files").mkdir()
    for name in ("images_background", "images_evaluation"):
        shutil.copy(served / f"{name}.zip", served / "files" / f"{name}.zip")
    monkeypatch.setattr(Omniglot, "resources", _resources(served))
    omniglot = Omniglot(tmp_path / "data", mirror=f"{base}/files/")  # the zip's name is appended
    omniglot.prepare()
    for name in ("images_background", "images_evaluation"):
        assert (tmp_path / "data" / "omniglot" / f"{name}.zip").read_bytes() == (served / f"{name}.zip").read_bytes()
    assert omniglot.characters.num_classes == NUM_CHARACTERS
    # Present files are neither re-checked nor fetched again, even from a mirror that is gone.
    monkeypatch.setattr(Omniglot, "resources", _resources(served, {"images_background": "md5:" + "0" * 32}))
    Omniglot(tmp_path / "data", mirror="http://127.0.0.1:9/none").prepare()


def test_split_downloads_when_absent(server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = server
    monkeypatch.setattr(Omniglot, "resources", _resources(served))
    split = Omniglot(tmp_path / "data", mirror=base, allow_partial=True).split("test")
    assert split.num_classes == 4 * 2


def test_download_checksum_mismatch(server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, served = server
    monkeypatch.setattr(Omniglot, "resources", _resources(served, {"images_evaluation": "md5:" + "0" * 32}))
    with pytest.raises(ChecksumError):
        Omniglot(tmp_path / "data", mirror=base).prepare()
    assert not (tmp_path / "data" / "omniglot" / "images_evaluation.zip").exists()


# -- the real release -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_omniglot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Omniglot:
    """The real release. Its decoded cache persists in pytest's cache folder (a cold decode
    takes ~10 s on 2 cores), or lives for the session when the cache plugin is off."""
    folder = omniglot_dir()
    if not all((folder / f"{name}.zip").is_file() for name in Omniglot.resources):
        pytest.skip(f"the real Omniglot zips are not in {folder}; set LIT_META_OMNIGLOT to their folder")
    pytest_cache = getattr(request.config, "cache", None)
    cache_dir = pytest_cache.mkdir("lit_meta_omniglot") if pytest_cache is not None else None
    return Omniglot(folder, download=False, cache_dir=cache_dir or tmp_path_factory.mktemp("omniglot_cache"))


def test_real_release(real_omniglot: Omniglot) -> None:
    characters = real_omniglot.characters
    assert characters.num_classes == 1623
    assert characters.class_sizes.tolist() == [20] * 1623
    assert characters.class_ids.tolist() == list(range(1623))
    assert int((characters.class_ids < 964).sum()) == 964
    assert len({name.split("/")[0] for name in characters.class_names}) == 50
    assert characters.data.shape == (32460, 1, 28, 28)
    # Ink bright: the background (most pixels) is 0, strokes are up to 255.
    assert float((characters.data == 0).float().mean()) > 0.5
    assert int(characters.data.max()) == 255
    assert characters.class_names[0] == "Arcadian/character01"
    assert characters.class_names[964] == "Angelic/character01"


@pytest.mark.parametrize(
    ("scheme", "sizes"), [("vinyals", (1028, 172, 423)), ("seeded", (1028, 172, 423)), ("lake", (883, 81, 659))]
)
def test_real_splits(real_omniglot: Omniglot, scheme: str, sizes: tuple[int, int, int]) -> None:
    real_omniglot.characters  # decoded once into the shared cache
    omniglot = Omniglot(real_omniglot.root, split=scheme, download=False, cache_dir=real_omniglot.cache_dir)
    seen: set[int] = set()
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        split = omniglot.split(name)
        assert split.num_classes == 4 * size
        assert len(split) == 4 * size * 20
        chars = set((split.class_ids // 4).tolist())
        assert len(chars) == size
        assert not chars & seen
        seen |= chars
        if scheme == "vinyals":  # the published lists' classes, rotations included: 4112 / 688 / 1692
            assert sorted(map(_as_list_line, split.class_names)) == sorted(_published_lines(name))
    if scheme == "lake":
        assert (omniglot.split("test").class_ids // 4).min() == 964


def test_real_santoro_split(real_omniglot: Omniglot) -> None:
    real_omniglot.characters  # decoded once into the shared cache
    kwargs = dict(download=False, cache_dir=real_omniglot.cache_dir, rotations=(0,), precompute_rotations=False)
    santoro = Omniglot(real_omniglot.root, split="santoro", **kwargs)
    train, test = santoro.split("train"), santoro.split("test")
    assert (train.num_classes, test.num_classes) == (1200, 423)
    assert not set(train.class_ids.tolist()) & set(test.class_ids.tolist())
    vinyals_test = Omniglot(real_omniglot.root, **kwargs).split("test")
    np.testing.assert_array_equal(test.class_ids, vinyals_test.class_ids)
    assert not santoro.has_split("val")


def test_real_cache_loads_fast(real_omniglot: Omniglot) -> None:
    real_omniglot.characters  # the cold decode, if no other test did it
    start = time.perf_counter()
    cached = Omniglot(real_omniglot.root, download=False, cache_dir=real_omniglot.cache_dir).characters
    assert time.perf_counter() - start < 2.0
    torch.testing.assert_close(cached.data, real_omniglot.characters.data)
