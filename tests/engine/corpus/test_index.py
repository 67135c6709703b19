from __future__ import annotations

from pathlib import Path

import numpy as np

import synthkiln.engine.corpus.index as index_module
from synthkiln.engine.corpus.index import SignatureFile


def test_a_signature_file_filled_out_of_order_reads_back_as_a_plain_npy(tmp_path: Path, monkeypatch) -> None:
    """Row ranges written in any order (one written twice, as a retried task would), then sealed: `np.load`
    reads it, and `read` gives any rows across its mapping windows, sorted or not."""
    monkeypatch.setattr(index_module, "WINDOW_ROWS", 7)
    signatures = np.random.default_rng(3).integers(0, 2**32, size=(50, 16), dtype=np.uint32)
    stored = SignatureFile(str(tmp_path / "signatures.npy"), 16)
    stored.create()
    for first in (40, 0, 20, 20, 10, 30):
        stored.write(first, signatures[first : first + 10])
    stored.seal(50)
    np.testing.assert_array_equal(np.load(stored.path), signatures)
    rows = np.array([0, 6, 7, 13, 14, 27, 49])
    np.testing.assert_array_equal(stored.read(rows), signatures[rows])
    np.testing.assert_array_equal(stored.read(rows[::-1]), signatures[rows[::-1]])
    assert stored.read(np.zeros(0, np.int64)).shape == (0, 16)
