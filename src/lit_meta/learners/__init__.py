"""Meta-learners: LightningModules around a functional backbone.

- :mod:`~lit_meta.learners.base`: :class:`MetaLearner`, the base of every learner.
- :mod:`~lit_meta.learners.gradient`: the gradient-based family's base (inner loop,
  adaptation, per-task meta-gradient, execution paths);
  :mod:`~lit_meta.learners.execution` chooses an execution path by measurement.
- :mod:`~lit_meta.learners.metric`: the metric-based family's base (the classifier over a
  support summary); :mod:`~lit_meta.learners.embedding` embeds episodes and checks their size.
- :mod:`~lit_meta.learners.classification`: pieces shared by learners that score classes
  (class one-hots, a temperature).
- :mod:`~lit_meta.learners.sequence`: the sequence (model-based) family's base (an episode
  as an ordered sequence of item and label steps, queries read after the support).
- one module per algorithm, on its family base (LEO and the Baselines directly on
  :class:`MetaLearner`; :mod:`~lit_meta.learners.finetuning` fits a new head per task).
- :mod:`~lit_meta.learners.registry`: the learners lit-meta knows (this package,
  the ``lit_meta.learners`` entry points, imported subclasses).
"""

from lit_meta.learners.anil import ANIL
from lit_meta.learners.base import ClassScores, MetaLearner, TaskModel
from lit_meta.learners.baseline import Baseline, BaselinePlusPlus
from lit_meta.learners.classification import Temperature
from lit_meta.learners.execution import ExecutionPlan, ExecutionPlanner
from lit_meta.learners.gradient import AdaptedNetwork, GradientMetaLearner, loss_with_gradients
from lit_meta.learners.leo import LEO
from lit_meta.learners.maml import MAML
from lit_meta.learners.mann import MANN
from lit_meta.learners.matching_net import MatchingNet
from lit_meta.learners.meta_lstm import MetaLSTM
from lit_meta.learners.meta_sgd import MetaSGD
from lit_meta.learners.metanet import MetaNet
from lit_meta.learners.metric import MetricClassifier, MetricMetaLearner
from lit_meta.learners.protonet import ProtoNet
from lit_meta.learners.registry import ENTRY_POINT_GROUP, UnknownLearnerError, registered_learners, resolve_learner
from lit_meta.learners.relation_net import RelationNet, default_relation_module, relation_embedding
from lit_meta.learners.reptile import Reptile
from lit_meta.learners.sequence import SequenceClassifier, SequenceMetaLearner
from lit_meta.learners.siamese import SiameseNet
from lit_meta.learners.snail import SNAIL

__all__ = [
    "ANIL",
    "ENTRY_POINT_GROUP",
    "LEO",
    "MAML",
    "MANN",
    "SNAIL",
    "AdaptedNetwork",
    "Baseline",
    "BaselinePlusPlus",
    "ClassScores",
    "ExecutionPlan",
    "ExecutionPlanner",
    "GradientMetaLearner",
    "MatchingNet",
    "MetaLSTM",
    "MetaLearner",
    "MetaNet",
    "MetaSGD",
    "MetricClassifier",
    "MetricMetaLearner",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SequenceClassifier",
    "SequenceMetaLearner",
    "SiameseNet",
    "TaskModel",
    "Temperature",
    "UnknownLearnerError",
    "default_relation_module",
    "loss_with_gradients",
    "registered_learners",
    "relation_embedding",
    "resolve_learner",
]
