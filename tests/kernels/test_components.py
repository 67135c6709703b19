import numpy as np
import pytest

from synthkiln.kernels.components import large_star, small_star, sorted_edges, star_members
from synthkiln.kernels.lsh import union_find


def components(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The steps alternated over the whole graph at once: (members, centres, steps)."""
    src, dst = np.concatenate([first, second]), np.concatenate([second, first])
    steps = 0
    while True:
        larger, smaller, star = large_star(src, dst)
        steps += 1
        if star:
            return *star_members(src, dst), steps
        larger, smaller = small_star(larger, smaller)
        steps += 1
        src, dst = np.concatenate([larger, smaller]), np.concatenate([smaller, larger])


@pytest.mark.parametrize(("nodes", "edges"), [(50, 30), (2000, 1500), (20000, 40000)])
def test_components_equal_union_find(nodes: int, edges: int) -> None:
    rng = np.random.default_rng(nodes)
    first, second = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
    first, second = first[first != second], second[first != second]
    members, centres, steps = components(first, second)
    np.testing.assert_array_equal(members, np.unique(np.concatenate([first, second])))
    np.testing.assert_array_equal(centres, union_find(nodes, first, second)[members])
    assert steps > 1  # random graphs are not stars to begin with


def test_a_long_chain_takes_logarithmically_many_steps() -> None:
    order = np.random.default_rng(0).permutation(20000)
    members, centres, steps = components(order[:-1], order[1:])
    assert len(members) == 20000 and (centres == 0).all()
    assert 4 < steps < 40


def test_a_star_forest_is_recognised_and_kept() -> None:
    src, dst = np.array([3, 5, 5, 9, 1, 1]), np.array([1, 1, 1, 2, 3, 5])  # stars {1, 3, 5} and {2, 9}
    both = np.concatenate([src, np.array([2])]), np.concatenate([dst, np.array([9])])
    larger, smaller, star = large_star(*both)
    assert star and sorted(zip(larger.tolist(), smaller.tolist(), strict=True)) == [(3, 1), (5, 1), (9, 2)]
    members, centres = star_members(*both)
    assert members.tolist() == [1, 2, 3, 5, 9] and centres.tolist() == [1, 2, 1, 1, 2]
    not_star = large_star(np.array([1, 2, 2, 3]), np.array([2, 1, 3, 2]))  # the path 1-2-3
    assert not not_star[2]


def test_rows_past_32_bits_sort_as_pairs() -> None:
    big = 1 << 40
    src, dst = sorted_edges(np.array([big + 1, 5, big + 1, 5]), np.array([3, big, 3, 2]))
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == [(5, 2), (5, big), (big + 1, 3)]
    members, centres, _ = components(np.array([big, big + 7, 3]), np.array([big + 7, 3, big + 9]))
    assert members.tolist() == [3, big, big + 7, big + 9] and (centres == 3).all()
