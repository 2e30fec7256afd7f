"""easyfsl's side of ``benchmarks/side_by_side.py`` (Prototypical, Matching and Relation networks).

Runs in the easyfsl peer environment (``PEER_LIBRARY=easyfsl bash benchmarks/peer_env.sh``). The loop
of easyfsl's episodic training notebook: ``model.process_support_set(support, labels)``,
``scores = model(query)``, the method's loss, backward, Adam (1e-3); evaluation as easyfsl's
``evaluate``: ``model.eval()``, the same two calls without gradients, accuracy of the argmax.
The methods are easyfsl's with lit-meta's networks (``peers/networks.py``) and initial weights:

* ``protonet``: ``PrototypicalNetworks(conv4)``, cross-entropy of its scores (minus the Euclidean
  distance, not squared: easyfsl has no squared option);
* ``matching``: ``MatchingNetworks(conv4, feature_dimension=64)`` with its full context embeddings
  (their support LSTM gets lit-meta's weights; their query cell has another shape than lit-meta's and
  keeps its own initialisation), NLL loss of its log-probabilities as its docstring says;
* ``relation``: ``RelationNetworks(relation_embedding, feature_dimension=64, relation_module=...)``
  with lit-meta's relation module passed in, MSE to the one-hot labels (the paper's, its docstring's).

easyfsl embeds the support set and the query set in two backbone calls (lit-meta in one), so in
training BatchNorm normalises each with its own statistics and updates its running statistics twice
a step. A diagnostic gradient on the first batch undoes that (one backbone call, its features handed
to the method) and, for ProtoNet, squares the distance: what is left of the difference to lit-meta's
gradient is the libraries' arithmetic. Imports torch, easyfsl and helpers from ``benchmarks/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from easyfsl.methods import MatchingNetworks, PrototypicalNetworks, RelationNetworks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from networks import conv4, load_state, relation_embedding, relation_module
from side_protocol import arguments, run_side


def build(learner: str):
    """The easyfsl model, the modules holding lit-meta's weights, the backbone, and the loss of the scores."""
    if learner == "protonet":
        backbone = conv4(None)
        return PrototypicalNetworks(backbone), [backbone], backbone, F.cross_entropy
    if learner == "matching":
        backbone = conv4(None)
        torch.manual_seed(0)
        model = MatchingNetworks(backbone, feature_dimension=64)
        return model, [backbone, model.support_features_encoder], backbone, F.nll_loss
    if learner == "relation":
        backbone, scorer = relation_embedding(), relation_module()
        model = RelationNetworks(backbone, feature_dimension=64, relation_module=scorer)
        return model, [backbone, scorer], backbone, lambda s, y: F.mse_loss(s, F.one_hot(y, s.shape[-1]).float())
    raise ValueError(f"easyfsl side: no learner {learner!r}")


def main() -> None:
    args = arguments()
    model, shared, backbone, loss = build(args.learner)
    load_state(shared, args.workdir / "init.pt")

    def loss_of(batch):
        model.process_support_set(batch["support_x"][0], batch["support_y"][0])  # meta-batch of 1
        return loss(model(batch["query_x"][0]), batch["query_y"][0])

    def aligned_loss_of(batch):
        support_x, query_x = batch["support_x"][0], batch["query_x"][0]
        both = backbone(torch.cat([support_x, query_x]))
        features = {id(support_x): both[: len(support_x)], id(query_x): both[len(support_x) :]}
        model.compute_features = lambda images: features[id(images)]  # an instance attribute, deleted below
        try:
            model.process_support_set(support_x, batch["support_y"][0])
            scores = model(query_x)
        finally:
            del model.compute_features
        if args.learner == "protonet":
            scores = -scores.square()  # minus the squared Euclidean distance
        return loss(scores, batch["query_y"][0])

    @torch.no_grad()
    def correct_of(batch):
        model.eval()
        correct = []
        for t in range(len(batch["support_x"])):
            model.process_support_set(batch["support_x"][t], batch["support_y"][t])
            correct.append((model(batch["query_x"][t]).argmax(-1) == batch["query_y"][t]).float().mean())
        model.train()
        return torch.stack(correct)

    run_side(
        args,
        loss_of,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        correct_of,
        shared,
        backbone,
        aligned_loss_of if args.learner in ("protonet", "relation") else None,
    )


if __name__ == "__main__":
    main()
