import numpy as np

from synthkiln.kernels.arrays import distinct


def test_distinct_is_the_sorted_set_of_values() -> None:
    values = np.random.default_rng(1).integers(0, 5000, 4000).astype(np.uint64)  # some repeated
    found = distinct(values)
    assert len(found) < len(values) and found.tolist() == sorted(set(values.tolist()))
    assert distinct(np.array([7])).tolist() == [7] and distinct(np.zeros(0, np.int64)).tolist() == []
