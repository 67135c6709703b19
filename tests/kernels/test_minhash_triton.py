"""Triton == Numba, bit for bit. Runs in Triton's interpreter on CPU (a subprocess, since
TRITON_INTERPRET must be set before triton is imported) and natively where CUDA is present."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

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
    env = dict(os.environ)
    try:
        import torch

        if not torch.cuda.is_available():
            env["TRITON_INTERPRET"] = "1"
    except ImportError:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(gsm8k_dir / "train.jsonl")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["checked"] == 17 * (128 + 100 + 64)
