"""MANN (Santoro et al., 2016): causality, LRUA addressing, per-episode memory, and learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_meta.learners.mann import MANN, LRUAMemoryCell

WAYS, FEATURES = 3, 6


def small_mann(**kwargs: object) -> MANN:
    torch.manual_seed(0)
    options = dict(ways=WAYS, embedding_dim=FEATURES, controller_size=16, memory_slots=8, memory_width=5, read_heads=2)
    options.update(kwargs)
    return MANN(nn.Flatten(), **options)  # type: ignore[arg-type]


def random_sequence(tasks: int = 2, steps: int = 9) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    items = torch.randn(tasks, steps, FEATURES, generator=generator)
    labels = torch.nn.functional.one_hot(torch.randint(WAYS, (tasks, steps), generator=generator), WAYS)
    return torch.cat([items, labels.float()], dim=-1)


@pytest.mark.parametrize("channel", ["item", "label"])
def test_an_earlier_output_never_depends_on_a_later_step(channel: str) -> None:
    """Changing step t (its item or its label channel) leaves every output before t as it was,
    and changes the output at t or after; checked at every position."""
    model = small_mann()
    sequence = random_sequence()
    with torch.no_grad():
        reference, _, _ = model.run(sequence)
        for t in range(sequence.shape[1]):
            changed = sequence.clone()
            if channel == "item":
                changed[:, t, :FEATURES] += 1.0
            else:
                changed[:, t, FEATURES:] = changed[:, t, FEATURES:].roll(1, dims=-1)
            outputs, _, _ = model.run(changed)
            torch.testing.assert_close(outputs[:, :t], reference[:, :t], rtol=0, atol=0)
            assert not torch.allclose(outputs[:, t:], reference[:, t:])


def test_read_and_write_weights_are_distributions_and_usage_follows_eq_5() -> None:
    """Every head's read and write weights are non-negative and sum to 1 at every step; the usage
    weights are w^u_t = gamma w^u_{t-1} + sum of read and write weights (Eq. 5), so not a distribution."""
    cell = LRUAMemoryCell(input_size=FEATURES, controller_size=16, slots=8, width=5, heads=2, usage_decay=0.9)
    x = torch.randn(20, 3, FEATURES)
    state = cell.initial_state(3, x)
    with torch.no_grad():
        for step in x:
            previous = state
            _, state, access = cell(step, state)
            for weights in (state.read_weights, access.write_weights):
                assert (weights >= 0).all()
                torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2))
            expected = 0.9 * previous.usage + state.read_weights.sum(1) + access.write_weights.sum(1)
            torch.testing.assert_close(state.usage, expected)
            torch.testing.assert_close(state.usage.sum(-1), 0.9 * previous.usage.sum(-1) + 4.0)


def test_the_lru_write_goes_to_the_least_used_slot_cleared_first() -> None:
    """With the gate closed (sigma(alpha) = 0) each head writes its key wholly into its least-used slot
    (head h: the h-th least used), and the least-used slot's old content is erased before the write."""
    cell = LRUAMemoryCell(input_size=FEATURES, controller_size=16, slots=8, width=5, heads=2)
    with torch.no_grad():
        cell.gate.fill_(-50.0)
    x = torch.randn(1, FEATURES)
    state = cell.initial_state(1, x)
    usage = torch.tensor([[5.0, 0.3, 4.0, 0.1, 2.0, 3.0, 6.0, 7.0]])  # least used: slot 3, then slot 1
    state = state._replace(memory=torch.ones(1, 8, 5), usage=usage)
    with torch.no_grad():
        _, after, access = cell(x, state)
        keys = torch.tanh(cell.key(after.hidden)).view(1, 2, 5)
    assert access.write_weights[0].argmax(-1).tolist() == [3, 1]
    torch.testing.assert_close(access.write_weights[0].sum(-1), torch.ones(2))
    assert int(access.cleared) == 3
    torch.testing.assert_close(after.memory[0, 3], keys[0, 0])  # cleared, then head 0's key
    torch.testing.assert_close(after.memory[0, 1], 1.0 + keys[0, 1])  # not cleared: head 1's key added
    untouched = [0, 2, 4, 5, 6, 7]
    torch.testing.assert_close(after.memory[0, untouched], torch.ones(6, 5))


def test_every_episode_starts_from_an_empty_memory() -> None:
    """The state at the start of an episode is empty, and the tasks of a meta-batch never see each
    other: permuting the tasks permutes the outputs, and a task alone gives the same outputs."""
    model = small_mann()
    sequence = random_sequence(tasks=4)
    state = model.cell.initial_state(4, sequence)
    assert not state.memory.any() and not state.usage.any() and not state.hidden.any()
    with torch.no_grad():
        outputs, _, _ = model.run(sequence)
        permutation = torch.tensor([2, 0, 3, 1])
        permuted, _, _ = model.run(sequence[permutation])
        alone, _, _ = model.run(sequence[1:2])
    torch.testing.assert_close(permuted, outputs[permutation])
    torch.testing.assert_close(alone, outputs[1:2])


def test_each_query_continues_the_support_sequence_and_queries_are_independent() -> None:
    """A query's logits are the output of the step after the support (carrying the last support label,
    as the offset sequence does); changing one query leaves the others' logits unchanged."""
    model = small_mann().eval()
    support_x = torch.randn(7, FEATURES)
    support_y = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    query_x = torch.randn(4, FEATURES)
    with torch.no_grad():
        _, query_logits = model(support_x, support_y, query_x)
        last_label = torch.nn.functional.one_hot(support_y[-1:], WAYS).float()
        for q in range(4):
            sequence = torch.cat([support_x, query_x[q : q + 1]])
            labels = torch.cat([torch.zeros(1, WAYS), torch.nn.functional.one_hot(support_y, WAYS).float()])
            plain, _, _ = model.run(torch.cat([sequence, labels], dim=-1).unsqueeze(0))
            torch.testing.assert_close(query_logits[q], plain[0, -1])
            assert torch.equal(labels[-1:], last_label)
        changed = query_x.clone()
        changed[0] += 1.0
        _, changed_logits = model(support_x, support_y, changed)
    torch.testing.assert_close(changed_logits[1:], query_logits[1:], rtol=0, atol=0)
    assert not torch.allclose(changed_logits[0], query_logits[0])
    torch.testing.assert_close(model.adapt(support_x, support_y)(query_x), query_logits)


def test_a_backbone_of_another_size_is_one_clear_error() -> None:
    model = small_mann()
    with pytest.raises(Exception, match="embedding_dim=7"):
        model(torch.randn(3, 7), torch.tensor([0, 1, 2]), torch.randn(2, 7))


@pytest.mark.slow
def test_meta_training_on_the_glyphs_beats_chance_on_new_characters(tmp_path) -> None:
    """3-way episodes of 3 presentations per class on 16x16 procedural glyphs, a small MANN with the
    paper's 4 read heads: 2,500 steps of 16 episodes (about 2-3 min on 2 cores). Like the paper's
    curves (Figure 2) the query accuracy sits at chance (1/3) for ~1,200 steps while the learner only
    exploits the label sequence, then rises; measured: 0.74-0.76 on the training episodes by 3,000
    steps. Asserted on 200 test episodes of unseen characters: query accuracy above 0.55 (chance
    0.33) and the 3rd presentation above the 1st."""
    import lightning as L

    from lit_meta.data.datamodule import EpisodicDataModule

    torch.manual_seed(0)
    dm = EpisodicDataModule(
        "glyphs", root=str(tmp_path), dataset_kwargs={"image_size": 16}, ways=3, shots=3, queries=2,
        support_order="random", meta_batch_size=16, train_episodes=16 * 2500, test_episodes=200,
        eval_meta_batch_size=50,
    )  # fmt: skip
    model = MANN(
        nn.Flatten(), ways=3, embedding_dim=256, controller_size=64, memory_slots=32, memory_width=16,
        read_heads=4, meta_lr=3e-3,
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=2500, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    (results,) = trainer.test(model, dm, verbose=False)
    assert results["test/acc"] > 0.55, results
    assert results["test/acc_instance_3"] > results["test/acc_instance_1"], results


def test_the_ports_write_gate_comes_from_the_controller_and_writes_a_separate_vector() -> None:
    """``write_gate="controller"``: sigma(alpha_t) is emitted per head and step from h_t; with it
    closed, a head writes wholly to its least-used slot, and with it open, to the slots it read last.
    ``write_content="add"``: what lands in memory is tanh(W_a h_t + b), not the read key."""
    cell = LRUAMemoryCell(
        input_size=FEATURES, controller_size=16, slots=8, width=5, heads=2, write_gate="controller", write_content="add"
    )
    assert isinstance(cell.gate, nn.Linear) and cell.add is not None
    x = torch.randn(1, FEATURES)
    usage = torch.tensor([[5.0, 0.3, 4.0, 0.1, 2.0, 3.0, 6.0, 7.0]])  # least used: slot 3, then slot 1
    read_weights = torch.nn.functional.one_hot(torch.tensor([[6, 7]]), 8).float()
    for bias, expected_slots in ((-50.0, [3, 1]), (50.0, [6, 7])):
        state = cell.initial_state(1, x)._replace(usage=usage, read_weights=read_weights)
        with torch.no_grad():
            cell.gate.weight.zero_()
            cell.gate.bias.fill_(bias)
            _, after, access = cell(x, state)
            added = torch.tanh(cell.add(after.hidden)).view(1, 2, 5)
            keys = torch.tanh(cell.key(after.hidden)).view(1, 2, 5)
        assert access.write_weights[0].argmax(-1).tolist() == expected_slots
        torch.testing.assert_close(after.memory[0, expected_slots], added[0])
        assert not torch.allclose(added, keys)
    with torch.no_grad():  # the gate now depends on the step: different items, different gates
        cell.gate.weight.normal_()
        cell.gate.bias.zero_()
        two = torch.randn(2, FEATURES)
        state = cell.initial_state(2, two)._replace(
            usage=usage.expand(2, -1), read_weights=read_weights.expand(2, -1, -1)
        )
        _, _, access = cell(two, state)
    assert not torch.allclose(access.write_weights[0], access.write_weights[1])


@pytest.mark.parametrize("option", [{"write_gate": "scalar"}, {"write_content": "erase"}])
def test_an_unknown_write_option_is_one_clear_error(option: dict[str, str]) -> None:
    name = next(iter(option))
    with pytest.raises(ValueError, match=name):
        LRUAMemoryCell(input_size=FEATURES, **option)  # type: ignore[arg-type]
