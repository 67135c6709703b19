"""Triton == Numba, bit for bit. Runs in Triton's interpreter on CPU (a subprocess, since
TRITON_INTERPRET must be set before triton is imported) and natively where CUDA is present."""

from __future__ import annotations

import pytest

from tests.conftest import run_triton_script

pytest.importorskip("triton", reason="triton is installed by `make test`")

SCRIPT = """
import json, sys
import numpy as np
import pyarrow as pa
from synthkiln.kernels.minhash import minhash_signatures
from synthkiln.kernels.text import Normalization

rows = [json.loads(line) for line in open(sys.argv[1]).read().splitlines()[:12]]
texts = [r["question"] + " " + r["answer"] for r in rows]
texts += ["", None, "two words", "Café — ÉTÉ  naïve façade 北京 !!!", "   \\t ..."]
texts += ["q" * 2100 + " tail", "w" * 255 + " " + "v" * 257, "x " * 300]  # words across 256-byte blocks
array = pa.array(texts)
checked = 0
for tokens, ngram, num_perm, normalization in [
    ("words", 5, 128, Normalization()),
    ("words", 3, 100, Normalization(digits=True, punctuation=False)),
    ("chars", 7, 64, Normalization()),
]:
    numba = minhash_signatures(array, num_perm=num_perm, ngram=ngram, tokens=tokens, normalization=normalization,
                               backend="numba")
    triton = minhash_signatures(array, num_perm=num_perm, ngram=ngram, tokens=tokens, normalization=normalization,
                                backend="triton")
    assert triton.dtype == np.uint32 and triton.shape == numba.shape
    differing = np.flatnonzero((triton != numba).any(axis=1)).tolist()
    assert not differing, (tokens, ngram, num_perm, differing)
    checked += triton.size
print(json.dumps({"checked": checked}))
"""


@pytest.mark.slow
def test_triton_matches_numba_bit_for_bit(gsm8k_dir) -> None:
    result = run_triton_script(SCRIPT, str(gsm8k_dir / "train.jsonl"))
    assert result["checked"] == 20 * (128 + 100 + 64)
