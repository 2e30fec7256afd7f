"""Meta Networks: fast weights generated from loss gradients, stored in a memory and read by attention."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from lit_meta.data.episode import EpisodeBatch
from lit_meta.functional import clone_inference_tensors, task_buffers
from lit_meta.learners.base import ClassScores, MetaLearner

LayerKind = Literal["conv", "linear"]
"""The layers layer augmentation extends: ``nn.Conv2d`` and ``nn.Linear``."""


class MetaNet(MetaLearner):
    """Meta Networks (Munkhdalai & Yu, 2017, "Meta Networks", ICML, arXiv:1703.00837).

    A base learner ``b`` (the ``backbone``, slow weights ``W``) classifies with example-level
    fast weights ``W*``; a representation function ``u`` (``representation``, slow weights
    ``Q``) embeds with task-level fast weights ``Q*``. Both kinds of fast weights are made by
    networks from loss gradients, the paper's meta information (Algorithm 1, Section 3):

    1. ``T`` support examples (``representation_examples``, default all) give ``u``'s
       representation-loss gradients ``grad_Q L_i``; ``d`` reads them, one after the other,
       and writes ``Q* = d(G, {grad_i})`` (Section 3.1, Eqs. 2-4).
    2. Each support example ``i`` gives ``b``'s task-loss gradient ``grad_W L_i``, and
       ``W*_i = m(Z, grad_i)`` (Eq. 1; Section 3.2, Eqs. 10-11) is written in the memory
       ``M`` under the key ``r'_i = u(Q, Q*, x'_i)`` (Eq. 5).
    3. A query ``x`` reads ``W* = softmax(a)^T M`` with ``a_i`` the cosine similarity of
       ``u(Q, Q*, x)`` and ``r'_i`` (Eqs. 8-9), and is classified by ``b(W, W*, x)`` (Eq. 12).

    Meta-training minimises the query cross-entropy (Algorithm 1: ``L_train`` sums
    ``loss_task`` over the training examples and updates every slow weight with its gradient).
    The representation loss only makes the gradients ``d`` reads; it is not added to the
    objective: its labels are the episode's, a fresh permutation of the classes in every task,
    which slow weights alone cannot learn.

    Choices, and where they come from:

    * **Layer augmentation** (Section 3.3, Figure 2): every ``nn.Conv2d`` and ``nn.Linear``
      of ``b`` and ``u`` transforms its input with the slow and with the fast weights; each
      result goes on through the network's own operations (BatchNorm, pooling, ReLU) up to
      the next such layer, which takes their element-wise sum as its input. The output
      layer (the last ``nn.Linear``) sums the two transformed inputs before the softmax.
      (The authors' code sums right after each ReLU and max-pools the sum; a network run as
      it is max-pools each stream before the next layer sums them.)
      The network runs as it is, through :func:`torch.func.functional_call` with its slow
      weights: a :class:`LayerAugmentation` mode carries the second (fast) stream beside the
      first, as extra channels. Fast weights apply to all conv and linear layers, as in the
      authors' "full" Omniglot model (Chainer code, tsendeemts/MetaNet, ``MetaNetFull``),
      weights and biases alike. BatchNorm normalises the slow stream only (the authors'
      network has none): fast weights of zero therefore add exactly nothing.
    * **m** is a coordinate-wise MLP (2 -> 20 -> 20 -> 1, ReLU) and **d** a coordinate-wise
      LSTM (20 units, its last output through a linear layer): Section 3.1 ("We use LSTM for
      d"; summing the gradients into an MLP "results in a poor convergence"), Appendix A
      (20 hidden units) and the authors' code, which, like this, keeps separate ``m`` and ``d``
      for conv and for linear layers. ``generator_hidden`` sets the width. Their output layers
      start at zero, so meta-training starts from the slow networks and the fast weights grow
      from zero (a deviation: with the usual initialisation every fast weight starts near
      +-0.5, whatever the layer's fan-in, and a Conv4's first query losses were ~1e5).
    * **Gradient preprocessing**: each gradient coordinate ``g`` enters ``m`` and ``d`` as
      ``(log|g| / p, sign g)`` when ``|g| >= e^-p``, else ``(-1, e^p g)`` (Andrychowicz et al.,
      2016, Appendix A), with ``p = 7`` as in the authors' code (``gradient_preprocessing_p``).
    * **Representation loss**: cross-entropy of ``u``'s class scores, which the paper uses
      when the support set has one example per class (Section 3.1), as in its Omniglot and
      miniImageNet 1-shot experiments; the contrastive loss over example pairs it suggests
      for larger support sets is not implemented. ``T`` is all the support examples by
      default (the authors' code reads 5 gradients, which for 5-way 1-shot is all of them).
      With ``T`` smaller than the support set, a random subset is drawn for every task,
      at evaluation too.
    * **Keys**: the input of ``u``'s output layer, its penultimate representation, as in the
      authors' code; ``u``'s output layer only scores the representation loss.
    * **First order**: the meta information enters ``m`` and ``d`` as an input, without
      gradients flowing back through it (the authors' code copies the gradients out of the
      graph). Every slow weight, ``m`` and ``d`` learn from the query loss through the fast
      weights and the keys, except ``u``'s output layer: no loss reaches it, so it keeps its
      initial weights, as in the authors' code, and is frozen (``requires_grad=False``, which
      also keeps DDP from waiting for its gradients).
    * **BatchNorm**: the meta-information passes normalise with the support set's own batch
      statistics, in training and evaluation alike, and never update running statistics;
      the augmented passes follow the module's mode (training: batch statistics, running
      statistics updated; evaluation: running statistics). :meth:`adapt` never updates them.

    Paper setup (Section 4, Appendix A, and the authors' code): ``b`` and ``u`` are CNNs of
    5 conv layers (64 filters, 3x3) and 2 linear layers, Adam with rate 1e-3; Omniglot (1,200
    training and 423 test characters) 5-way 1-shot 98.95%, 20-way 1-shot 97.00% (Table 1);
    miniImageNet 5-way 1-shot 49.21% (Table 2).

    Args:
        backbone: the base learner ``b``: any network of ``nn.Conv2d``, ``nn.Linear`` and
            affine BatchNorm layers (parameter-free operations between them must act on each
            channel separately: ReLU, pooling, flatten, dropout, residual sums), whose last
            ``nn.Linear`` gives the class scores; its output size is the number of ways.
            Called functionally, never changed by adaptation.
        representation: the representation function ``u``, under the same conditions and with
            as many outputs (they score the representation loss); ``None``: a freshly
            initialised copy of ``backbone``.
        generator_hidden: hidden units of ``m`` (both layers) and of ``d``'s LSTM.
        representation_examples: ``T``, the support examples whose representation-loss
            gradients ``d`` reads; ``None`` for all of them.
        gradient_preprocessing_p: ``p`` of the gradient preprocessing.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``meta_lr``, ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    evaluation_needs_autograd: ClassVar[bool] = True
    class_scores: ClassVar[ClassScores] = "backbone_head"

    def __init__(
        self,
        backbone: nn.Module,
        representation: nn.Module | None = None,
        generator_hidden: int = 20,
        representation_examples: int | None = None,
        gradient_preprocessing_p: float = 7.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if generator_hidden < 1:
            raise ValueError(f"generator_hidden={generator_hidden}: m and d need at least one hidden unit")
        if representation_examples is not None and representation_examples < 1:
            raise ValueError(
                f"representation_examples={representation_examples}: d reads at least one gradient; "
                "None reads every support example's"
            )
        if gradient_preprocessing_p <= 0:
            raise ValueError(f"gradient_preprocessing_p={gradient_preprocessing_p}: it must be positive")
        if representation is backbone:
            raise ValueError(
                "representation is the backbone itself; u and b have weights of their own: pass another module, "
                "or None for a fresh copy of the backbone"
            )
        self.representation = fresh_copy(backbone) if representation is None else representation
        self.base_layers = augmented_layers(backbone, "backbone")
        self.representation_layers = augmented_layers(self.representation, "representation")
        ways = self.head_size()
        output_layer = next(layer for layer in self.representation_layers if layer.is_output)
        if output_layer.out_features != ways:
            raise ValueError(
                f"the representation's last nn.Linear has {output_layer.out_features} outputs but the backbone's has "
                f"{ways}: both score the ways (the representation for its loss); give them the same output size"
            )
        # u's output layer only scores the representation loss: its fast weights would never be read,
        # and no loss reaches its slow weights.
        task_layers = [layer for layer in self.representation_layers if not layer.is_output]
        self.representation.get_submodule(output_layer.name).requires_grad_(False)
        self.example_weight_generators = nn.ModuleDict(
            {kind: ExampleFastWeights(generator_hidden) for kind in _kinds(self.base_layers)}
        )
        self.task_weight_generators = nn.ModuleDict(
            {kind: TaskFastWeights(generator_hidden) for kind in _kinds(task_layers)}
        )
        self._task_layers = task_layers

    # -- Algorithm 1 ---------------------------------------------------------------------------
    def memorize(self, support_x: Tensor, support_y: Tensor, update_statistics: bool = True) -> TaskMemory:
        """Algorithm 1's lines 1-14: ``Q*``, then the memory ``M`` of ``W*_i`` and its keys ``R``.

        Args:
            support_x: one task's support items ``[ways * shots, *item_shape]``.
            support_y: their labels ``0 .. ways-1``.
            update_statistics: whether BatchNorm layers in training mode may update their
                running statistics (meta-training); :meth:`adapt` passes ``False``.
        """
        self.require_class_labels(support_y)
        chosen = self._representation_indices(len(support_x), support_x.device)
        representation_gradients = example_gradients(
            self.representation, _names(self._task_layers), support_x[chosen], support_y[chosen]
        )
        task_weights = generate(
            self.task_weight_generators,
            self._task_layers,
            representation_gradients,
            self.hparams.gradient_preprocessing_p,
        )
        base_gradients = example_gradients(self.backbone, _names(self.base_layers), support_x, support_y)
        example_weights = generate(
            self.example_weight_generators, self.base_layers, base_gradients, self.hparams.gradient_preprocessing_p
        )
        keys = self.represent(support_x, task_weights, update_statistics)
        return TaskMemory(task_weights, example_weights, keys)

    def represent(self, x: Tensor, task_weights: Mapping[str, Tensor], update_statistics: bool = True) -> Tensor:
        """``u(Q, Q*, x)``, ``[items, D]``, the input of the representation's output layer: the memory's keys
        for support items, what a query reads the memory with."""
        statistics = _statistics(self.representation, update_statistics)
        _, features = augmented_forward(self.representation, self.representation_layers, task_weights, x, statistics)
        return features.flatten(1)

    def classify(self, memory: TaskMemory, query_x: Tensor, update_statistics: bool = True) -> Tensor:
        """Algorithm 1's second loop: each query reads its ``W*`` from the memory; ``[queries, ways]`` logits."""
        keys = self.represent(query_x, memory.task_weights, update_statistics)
        attention = (F.normalize(keys, dim=-1) @ F.normalize(memory.keys, dim=-1).T).softmax(-1)
        statistics = _statistics(self.backbone, update_statistics)
        logits, _ = augmented_forward(
            self.backbone, self.base_layers, memory.example_weights, query_x, statistics, mixing=attention
        )
        return logits

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The mean query cross-entropy over the tasks of ``batch`` (Algorithm 1's ``L_train``)."""
        losses = [
            self.task_loss(self.classify(self.memorize(task.support_x, task.support_y), task.query_x), task.query_y)
            for task in batch
        ]
        return torch.stack(losses).mean()

    def adapt(self, support_x: Tensor, support_y: Tensor) -> MetaNetClassifier:
        """A task model holding the task's memory, computed once; works under :func:`torch.inference_mode`.

        Running statistics are not updated: in evaluation mode BatchNorm uses them, in
        training mode each batch's statistics.
        """
        if not support_y.is_floating_point():
            self.check_ways(int(support_y.max()) + 1, f"the support set has {int(support_y.max()) + 1} classes")
        with self.adaptation_context():
            support_x, support_y = clone_inference_tensors((support_x, support_y))
            memory = self.memorize(support_x, support_y, update_statistics=False)
        return MetaNetClassifier(self, memory.detached())

    def _representation_indices(self, examples: int, device: torch.device) -> Tensor | slice:
        wanted = self.hparams.representation_examples
        if wanted is None or wanted >= examples:
            return slice(None)
        return torch.randperm(examples, device=device)[:wanted]


@dataclass
class TaskMemory:
    """What MetaNet keeps of a support set.

    Attributes:
        task_weights: ``Q*``, the representation's fast weights by parameter name, ``[1, *shape]``.
        example_weights: the memory ``M``: the base learner's fast weights ``W*_i`` by parameter
            name, ``[support examples, *shape]``.
        keys: the memory's keys ``R``: ``r'_i = u(Q, Q*, x'_i)``, ``[support examples, D]``.
    """

    task_weights: dict[str, Tensor]
    example_weights: dict[str, Tensor]
    keys: Tensor

    def detached(self) -> TaskMemory:
        """The same memory cut from the graph that made it."""
        return TaskMemory(
            {n: w.detach() for n, w in self.task_weights.items()},
            {n: w.detach() for n, w in self.example_weights.items()},
            self.keys.detach(),
        )


class MetaNetClassifier:
    """MetaNet's task model: a task's memory and the learner that reads it; ``model(query_x)`` gives logits.

    The memory is a snapshot; the slow weights are the learner's own, as they are when called.
    """

    def __init__(self, learner: MetaNet, memory: TaskMemory) -> None:
        self.learner = learner
        self.memory = memory

    def __call__(self, query_x: Tensor) -> Tensor:
        return self.learner.classify(self.memory, query_x, update_statistics=False)


# -- fast-weight generators -----------------------------------------------------------------------
class ExampleFastWeights(nn.Module):
    """``m``: one fast weight from one preprocessed gradient coordinate, by an MLP shared by all coordinates.

    Args:
        hidden: units of its two hidden layers.
    """

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = zero_linear(hidden, 1)

    def forward(self, meta_information: Tensor) -> Tensor:
        """``[..., 2]`` preprocessed gradients -> ``[...]`` fast weights."""
        return self.out(self.layers(meta_information)).squeeze(-1)


class TaskFastWeights(nn.Module):
    """``d``: one fast weight from a coordinate's ``T`` preprocessed gradients, read in turn by an LSTM.

    Args:
        hidden: units of the LSTM.
    """

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, hidden)
        self.out = zero_linear(hidden, 1)

    def forward(self, meta_information: Tensor) -> Tensor:
        """``[T, coordinates, 2]`` preprocessed gradients -> ``[coordinates]`` fast weights."""
        outputs, _ = self.lstm(meta_information)
        return self.out(outputs[-1]).squeeze(-1)


def preprocess_gradients(gradients: Tensor, p: float = 7.0) -> Tensor:
    """``[...] -> [..., 2]``: ``(log|g| / p, sign g)`` if ``|g| >= e^-p``, else ``(-1, e^p g)``.

    The preprocessing of Andrychowicz et al. (2016, "Learning to learn by gradient descent by
    gradient descent", NeurIPS, Appendix A): gradients of very different magnitudes become
    inputs of similar scale.
    """
    large = gradients.abs() >= math.exp(-p)
    log = torch.where(large, gradients.abs().clamp_min(math.exp(-p)).log() / p, -1.0)
    sign = torch.where(large, gradients.sign(), gradients * math.exp(p))
    return torch.stack([log, sign], dim=-1)


def example_gradients(network: nn.Module, names: Sequence[str], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Each example's cross-entropy gradient with respect to the named parameters, ``[examples, *shape]``.

    One forward pass over all the examples, with BatchNorm on their batch statistics (running
    statistics neither used nor updated), then one backward batched over the examples' losses
    (``is_grads_batched``). The gradients are meta information, an input to the generators:
    no gradient flows back through them.
    """
    params = {name: p.detach() for name, p in network.named_parameters()}
    leaves = [params[name].requires_grad_() for name in names]
    with torch.enable_grad():
        outputs = functional_call(network, {**params, **task_buffers(network)}, (x,))
        losses = F.cross_entropy(outputs, y, reduction="none")
        one_per_example = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(losses, leaves, grad_outputs=one_per_example, is_grads_batched=True)
    return dict(zip(names, grads, strict=True))


def generate(
    generators: Mapping[str, nn.Module], layers: Sequence[AugmentedLayer], gradients: Mapping[str, Tensor], p: float
) -> dict[str, Tensor]:
    """Fast weights by parameter name from per-example gradients, by each layer kind's generator.

    An ``m`` (:class:`ExampleFastWeights`) maps ``[examples, *shape]`` gradients to as many
    fast weights; a ``d`` (:class:`TaskFastWeights`) reads the examples' gradients in turn
    and writes one, ``[1, *shape]``.
    """
    fast: dict[str, Tensor] = {}
    for kind, generator in generators.items():
        names = [name for layer in layers if layer.kind == kind for name in layer.params]
        flat = torch.cat([gradients[name].flatten(1) for name in names], dim=1)  # [examples, coordinates]
        meta_information = preprocess_gradients(flat.float(), p)
        # float32 whatever the autocast: the generators are small, and oneDNN has no bfloat16 LSTM on CPU
        with torch.autocast(flat.device.type, enabled=False):
            weights = generator(meta_information)
        if isinstance(generator, TaskFastWeights):
            weights = weights.unsqueeze(0)
        sizes = [gradients[name][0].numel() for name in names]
        for name, chunk in zip(names, weights.split(sizes, dim=1), strict=True):
            fast[name] = chunk.reshape(len(chunk), *gradients[name].shape[1:])
    return fast


# -- layer augmentation ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentedLayer:
    """A layer that layer augmentation extends with fast weights.

    Attributes:
        name: its module name in the network.
        kind: ``"conv"`` or ``"linear"``.
        params: its parameter names in the network, the weight first.
        is_output: whether it is the network's output layer (its last ``nn.Linear``).
        out_features: its output size.
    """

    name: str
    kind: LayerKind
    params: tuple[str, ...]
    is_output: bool
    out_features: int


def augmented_layers(network: nn.Module, role: str) -> list[AugmentedLayer]:
    """The ``nn.Conv2d`` and ``nn.Linear`` layers of ``network``, in registration order.

    Raises:
        ValueError: the network has no ``nn.Linear`` (no output layer), a layer of another
            kind with parameters, or a BatchNorm layer without ``affine``.
    """
    linears = [name for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"the {role} has no nn.Linear layer: its last nn.Linear must give the class scores")
    layers = []
    for name, module in network.named_modules():
        prefix = f"{name}." if name else ""
        own = [f"{prefix}{p}" for p, _ in module.named_parameters(recurse=False)]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            kind: LayerKind = "conv" if isinstance(module, nn.Conv2d) else "linear"
            size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            layers.append(AugmentedLayer(name, kind, tuple(own), name == linears[-1], size))
        elif isinstance(module, _BatchNorm):
            if module.weight is None:
                raise ValueError(
                    f"the {role}'s BatchNorm layer {name!r} has affine=False; MetaNet's layer augmentation "
                    "needs affine BatchNorm layers (affine=True) to tell the slow stream's channels"
                )
        elif own:
            raise ValueError(
                f"MetaNet's layer augmentation extends nn.Conv2d and nn.Linear layers (and keeps BatchNorm's "
                f"slow weights); the {role}'s {name!r} is a {type(module).__name__} with parameters"
            )
    return layers


def augmented_forward(
    network: nn.Module,
    layers: Sequence[AugmentedLayer],
    fast: Mapping[str, Tensor],
    x: Tensor,
    buffers: Mapping[str, Tensor | None],
    mixing: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``network(x)`` with its layers augmented by fast weights, and the (summed) input of its output layer.

    Args:
        network: the network, run as it is through :func:`torch.func.functional_call` with its
            slow weights.
        layers: its :func:`augmented_layers`.
        fast: fast weights by parameter name, ``[slots, *shape]``; layers without are not augmented.
        x: its input.
        buffers: buffers in place of the network's own (BatchNorm statistics); missing ones are its own.
        mixing: ``[batch, slots]``: each example's fast weights are this mixture of the slots
            (a query's attention over the memory); ``None`` for one slot shared by every example.
    """
    slow = dict(network.named_parameters())
    mode = LayerAugmentation({id(slow[layer.params[0]]): layer for layer in layers}, fast, mixing)
    with mode:
        output = functional_call(network, {**slow, **buffers}, (x,))
    return output, mode.output_layer_input


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


class LayerAugmentation(TorchFunctionMode):
    """Layer augmentation (Munkhdalai & Yu, 2017, Section 3.3) of whatever network runs under it.

    Each call of ``F.conv2d`` or ``F.linear`` with an augmented layer's slow weight returns
    the slow and the fast transform of its input side by side, as twice the channels (the
    feature dimension for ``F.linear``): the operations that follow act on each channel, so
    each stream goes through its own nonlinearity. The next augmented layer sums the two
    streams into its input; the output layer returns the sum of its two transforms.
    ``F.batch_norm`` normalises the slow stream and passes the fast one unchanged.

    Args:
        layers: the augmented layers by ``id`` of the slow weight tensor the network passes.
        fast: fast weights by parameter name, ``[slots, *shape]``.
        mixing: ``[batch, slots]`` mixture weights of the slots per example, or ``None`` (one slot).

    Attributes:
        output_layer_input: the (summed) input of the output layer, once it has run.
    """

    def __init__(self, layers: Mapping[int, AugmentedLayer], fast: Mapping[str, Tensor], mixing: Tensor | None) -> None:
        super().__init__()
        self.layers = layers
        self.fast = fast
        self.mixing = mixing
        self.output_layer_input: Tensor | None = None

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d or func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            layer = self.layers.get(id(weight))
            if layer is not None:
                return self._augmented(func, layer, list(args), kwargs)
        elif func is F.batch_norm:
            call = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            arguments = call.arguments
            x = arguments["input"]
            if x.shape[1] == 2 * arguments["weight"].shape[0]:
                slow, fast = x.chunk(2, dim=1)
                return torch.cat([func(**{**arguments, "input": slow}), fast], dim=1)
        return func(*args, **kwargs)

    def _augmented(self, func: Any, layer: AugmentedLayer, args: list[Any], kwargs: dict[str, Any]) -> Tensor:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        call = {**dict(zip(names, args, strict=False)), **kwargs}
        x, weight = call.pop("input"), call.pop("weight")
        bias = call.pop("bias", None)
        conv = func is F.conv2d
        dim = 1 if conv else -1
        width = weight.shape[1] * call.get("groups", 1) if conv else weight.shape[1]
        if x.shape[dim] == 2 * width:  # a slow and a fast stream: their sum is this layer's input
            slow_stream, fast_stream = x.chunk(2, dim=dim)
            x = slow_stream + fast_stream
        slow = func(x, weight, bias, **call)
        if layer.is_output:
            self.output_layer_input = x
        if layer.params[0] not in self.fast:
            return slow
        fast_weight = self.fast[layer.params[0]]
        fast_bias = self.fast[layer.params[1]] if len(layer.params) > 1 else None
        fast = (
            _fast_conv(x, fast_weight, fast_bias, self.mixing, call)
            if conv
            else _fast_linear(x, fast_weight, fast_bias, self.mixing)
        )
        return slow + fast if layer.is_output else torch.cat([slow, fast], dim=dim)


def _fast_linear(x: Tensor, weight: Tensor, bias: Tensor | None, mixing: Tensor | None) -> Tensor:
    """``x [batch, in]`` through fast weights ``[slots, out, in]``, one slot or each example's mixture of them."""
    if mixing is None:
        return F.linear(x, weight[0], None if bias is None else bias[0])
    out = torch.einsum("bs,soi,bi->bo", mixing, weight, x)
    return out if bias is None else out + mixing @ bias


def _fast_conv(x: Tensor, weight: Tensor, bias: Tensor | None, mixing: Tensor | None, call: dict[str, Any]) -> Tensor:
    """``x [batch, in, H, W]`` through fast filters ``[slots, out, in/groups, kh, kw]``: one slot, or each
    example's own mixture of them (a grouped convolution with one group of filters per example)."""
    if mixing is None:
        return F.conv2d(x, weight[0], None if bias is None else bias[0], **call)
    batch = x.shape[0]
    filters = torch.einsum("bs,s...->b...", mixing, weight)
    biases = None if bias is None else (mixing @ bias).flatten()
    grouped = {**call, "groups": call.get("groups", 1) * batch}
    out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), filters.flatten(0, 1), biases, **grouped)
    return out.view(batch, -1, *out.shape[2:])


# -- helpers ----------------------------------------------------------------------------------------
def fresh_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with every layer's parameters initialised anew."""
    copied = copy.deepcopy(network)
    for module in copied.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return copied


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """An ``nn.Linear`` whose weights and biases start at zero: the generators' output layer, so that
    meta-training starts from the slow networks and the fast weights grow from zero."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _kinds(layers: Sequence[AugmentedLayer]) -> list[LayerKind]:
    return sorted({layer.kind for layer in layers})


def _names(layers: Sequence[AugmentedLayer]) -> list[str]:
    return [name for layer in layers for name in layer.params]


def _statistics(network: nn.Module, update: bool) -> dict[str, Tensor | None]:
    """The buffers of an augmented pass: the module's own, unless it is training and must not update them."""
    return task_buffers(network) if network.training and not update else {}
