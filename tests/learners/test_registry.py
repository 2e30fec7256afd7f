"""The learner registry: the package walked, entry points, imported subclasses; nothing else is imported."""

from __future__ import annotations

import sys
import textwrap

import pytest

from lit_meta.errors import LitMetaError
from lit_meta.learners import (
    MAML,
    GradientMetaLearner,
    MetaLearner,
    MetricMetaLearner,
    UnknownLearnerError,
    registered_learners,
    resolve_learner,
)


def test_the_package_is_walked_and_family_bases_are_not_learners():
    learners = registered_learners()
    own = {path for path in learners if path.startswith("lit_meta.")}
    assert own >= {
        "lit_meta.learners.maml.MAML",
        "lit_meta.learners.anil.ANIL",
        "lit_meta.learners.meta_sgd.MetaSGD",
        "lit_meta.learners.reptile.Reptile",
        "lit_meta.learners.protonet.ProtoNet",
        "lit_meta.learners.matching_net.MatchingNet",
        "lit_meta.learners.relation_net.RelationNet",
        "lit_meta.learners.siamese.SiameseNet",
    }
    assert not {MetaLearner, GradientMetaLearner, MetricMetaLearner} & set(learners.values())


def test_a_learner_is_found_by_its_class_path_or_a_name_its_package_exports():
    assert resolve_learner("lit_meta.learners.maml.MAML") is MAML
    assert resolve_learner("lit_meta.MAML") is MAML


def test_an_unknown_learner_is_refused_and_its_module_never_imported():
    with pytest.raises(UnknownLearnerError, match=r"not_imported_anywhere\.Learner is not a registered") as error:
        resolve_learner("not_imported_anywhere.Learner")
    assert "not_imported_anywhere" not in sys.modules
    assert '"lit_meta.learners" entry-point group' in str(error.value)
    with pytest.raises(UnknownLearnerError):
        resolve_learner("os.system")  # an imported module's attribute that is not a learner


def entry_point_package(root, name: str, module_source: str, target: str) -> None:
    """An installed distribution on ``root`` declaring ``target`` in the lit_meta.learners group."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lit_meta.learners]\n{name} = {target}\n")


def test_entry_points_register_learners_of_other_packages(tmp_path, monkeypatch):
    entry_point_package(
        tmp_path,
        "third_party_learner",
        """
        from lit_meta.learners import MAML

        class ThirdPartyMAML(MAML):
            pass
        """,
        "third_party_learner:ThirdPartyMAML",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "third_party_learner" not in sys.modules
    learners = registered_learners()
    assert learners["third_party_learner.ThirdPartyMAML"].__name__ == "ThirdPartyMAML"


def test_a_broken_entry_point_is_named(tmp_path, monkeypatch):
    entry_point_package(tmp_path, "broken_learner", "raise ImportError('missing dependency')", "broken_learner:X")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LitMetaError, match=r"entry point 'broken_learner'.*ImportError: missing dependency"):
        registered_learners()
