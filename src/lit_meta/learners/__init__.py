"""Meta-learners: LightningModules around a functional backbone."""

from lit_meta.learners.anil import ANIL
from lit_meta.learners.base import MetaLearner, TaskModel, loss_with_gradients
from lit_meta.learners.maml import MAML, AdaptedNetwork
from lit_meta.learners.matching_net import MatchingNet
from lit_meta.learners.meta_sgd import MetaSGD
from lit_meta.learners.protonet import MetricClassifier, ProtoNet, Temperature
from lit_meta.learners.relation_net import RelationNet, default_relation_module, relation_embedding
from lit_meta.learners.reptile import Reptile
from lit_meta.learners.siamese import SiameseNet

__all__ = [
    "ANIL",
    "MAML",
    "AdaptedNetwork",
    "MatchingNet",
    "MetaLearner",
    "MetaSGD",
    "MetricClassifier",
    "ProtoNet",
    "RelationNet",
    "Reptile",
    "SiameseNet",
    "TaskModel",
    "Temperature",
    "default_relation_module",
    "loss_with_gradients",
    "relation_embedding",
]
