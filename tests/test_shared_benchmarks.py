"""Tests that need ../shared/benchmarks skip where it is absent, but fail under CI=true."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest


def test_missing_benchmark_data_skips_locally_and_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "SHARED_BENCHMARKS", tmp_path)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("{}\n")
    assert conftest.shared_benchmark("gsm8k/train.jsonl") == tmp_path / "gsm8k" / "train.jsonl"

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"humaneval/HumanEval\.jsonl\.gz not found"):
        conftest.shared_benchmark("humaneval/HumanEval.jsonl.gz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"HumanEval\.jsonl\.gz not found .*CI=true"):
        conftest.shared_benchmark("humaneval/HumanEval.jsonl.gz")
