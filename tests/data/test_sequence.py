"""The label channels of an episode read as a sequence, and presentation numbers."""

from __future__ import annotations

import pytest
import torch

from lit_meta.data.sequence import label_channels, presentation_numbers


def test_offset_labels_feed_the_previous_steps_label() -> None:
    support_y = torch.tensor([[2, 0, 0, 1]])
    support, query = label_channels(support_y, ways=3, labels="offset", dtype=torch.float32)
    assert support.shape == (1, 4, 3) and query.shape == (1, 1, 3)
    assert support[0, 0].tolist() == [0, 0, 0]  # nothing before the first step
    assert support[0, 1:].argmax(-1).tolist() == [2, 0, 0]
    assert query[0, 0].tolist() == [0, 1, 0]  # a query step carries the last support label


def test_masked_labels_feed_each_steps_own_label_and_none_to_a_query() -> None:
    support_y = torch.tensor([1, 0, 2])
    support, query = label_channels(support_y, ways=4, labels="masked", dtype=torch.float64)
    assert support.dtype == torch.float64
    assert support.argmax(-1).tolist() == [1, 0, 2] and support.sum().item() == 3
    assert not query.any()


def test_an_unknown_encoding_is_an_error() -> None:
    with pytest.raises(ValueError, match="'offset' or 'masked'"):
        label_channels(torch.tensor([0, 1]), 2, "shifted", torch.float32)  # type: ignore[arg-type]


def test_presentation_numbers_count_the_earlier_steps_of_the_same_class() -> None:
    support_y = torch.tensor([[0, 1, 0, 0, 2, 1], [1, 1, 1, 0, 0, 2]])
    assert presentation_numbers(support_y).tolist() == [[1, 1, 2, 3, 1, 2], [1, 2, 3, 1, 2, 1]]
