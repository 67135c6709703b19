"""Triton probe == Numba probe, hit for hit (interpreter on CPU, in a subprocess since TRITON_INTERPRET
must be set before triton is imported; natively where CUDA is present)."""

from __future__ import annotations

import pytest

from tests.conftest import run_triton_script

pytest.importorskip("triton", reason="triton is installed by `make test`")

SCRIPT = """
import json, sys
import numpy as np
import pyarrow as pa
from synthkiln.kernels.ngram_index import NgramIndex, ngram_hashes

rows = [json.loads(line) for line in open(sys.argv[1]).read().splitlines()[:16]]
items = [r["question"] for r in rows[:12]] + ["tiny item of six words", "another short item"]
documents = [rows[i]["answer"][:300] + " " + rows[i]["question"].upper() + " so tiny item of six words"
             for i in range(0, 12, 2)]
documents += ["", None, "nothing here", rows[14]["question"], "another short item, twice: another short item"]
n = 8
hashes, prefixes = ngram_hashes(items, n), ngram_hashes(items, 3)
owners = np.repeat(np.arange(len(items)), np.diff(hashes.offsets))
short = hashes.words < n
index = NgramIndex.build(hashes.hashes, owners, np.array([n, 3]), np.where(short, hashes.words, 0)[owners],
                         prefixes.hashes[prefixes.offsets[:-1]][owners], 3)
numba = index.probe(pa.array(documents), backend="numba")
triton = index.probe(pa.array(documents), backend="triton")
for name in ("document", "position", "span", "posting"):
    assert np.array_equal(getattr(numba, name), getattr(triton, name)), name
print(json.dumps({"hits": len(numba), "whole": int((numba.span != n).sum())}))
"""


@pytest.mark.slow
def test_triton_probe_matches_numba(gsm8k_dir) -> None:
    result = run_triton_script(SCRIPT, str(gsm8k_dir / "train.jsonl"))
    assert result["hits"] > 100 and result["whole"] >= 8  # both passes found something to compare
