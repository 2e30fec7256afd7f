"""The installed ``lit-meta`` console script."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def test_help_lists_learners_and_datasets():
    exe = shutil.which("lit-meta")
    if exe is None:
        pytest.skip("the lit-meta console script is not installed in this environment")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("MAML", "ANIL", "MetaSGD", "Reptile", "ProtoNet", "MatchingNet", "RelationNet", "SiameseNet"):
        assert name in out
    for name in ("glyphs", "omniglot", "image_folder", "sinusoid"):
        assert name in out
