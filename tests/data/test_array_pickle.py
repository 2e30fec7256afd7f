"""load_array_pickle: numpy arrays and plain data unpickle; any other global is refused before it is called."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from lit_meta.data.array_pickle import load_array_pickle


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_arrays_and_plain_data_round_trip(protocol: int) -> None:
    data = {"image_data": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "class_dict": {"n01": [0, 1]}, b"k": 1.5}
    loaded = load_array_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert loaded.keys() == data.keys() and loaded["class_dict"] == {"n01": [0, 1]}
    np.testing.assert_array_equal(loaded["image_data"], data["image_data"])


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.getcwd, ())  # harmless stand-in for os.system


def test_a_pickle_naming_another_global_is_refused_before_calling_it() -> None:
    payload = pickle.dumps({"image_data": _RunsCode()})
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load the global posix\.getcwd"):
        load_array_pickle(io.BytesIO(payload))
