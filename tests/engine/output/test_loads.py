"""A real run's directory loads everywhere the README promises: `datasets` (parquet and the card's
`configs`), pandas, polars, and one TRL `SFTTrainer` step on its `messages`; the card states licence,
sampling, seeds and the share of samples cut at `max_tokens`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synthkiln.engine import Pipeline
from synthkiln.engine.output.card import model_license
from tests.conftest import QUICK_INSTRUCTIONS, REPO

pytestmark = pytest.mark.slow

# Run in a fresh interpreter: `datasets` reads HF_*_OFFLINE when imported, and its cache must not be
# the user's. Prints one JSON line of what each loader saw.
LOADERS = r"""
import json, math, sys
from pathlib import Path

import datasets, pandas, polars
from trl import SFTConfig, SFTTrainer

out, model, scratch = map(Path, sys.argv[1:])
seen = {}
parquet = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
seen["parquet_rows"] = parquet.num_rows
seen["features"] = {name: str(feature) for name, feature in parquet.features.items()}
seen["seed_fields"] = parquet[0]["seed_fields"]
seen["minhash_length"] = len(parquet[0]["minhash"])
seen["rejected_rows"] = datasets.load_dataset("parquet", data_dir=str(out / "rejected"), split="train").num_rows
by_card = datasets.load_dataset(str(out), split="train")  # the card's `configs`
seen["card_rows"] = by_card.num_rows
seen["card_ids"] = sorted(by_card["id"]) == sorted(parquet["id"])
seen["pandas_rows"] = len(pandas.read_parquet(out / "data"))
frame = polars.read_parquet(str(out / "data" / "*.parquet"))
seen["polars_rows"] = frame.height
seen["polars_seed_fields"] = str(frame.schema["seed_fields"])
config = SFTConfig(
    output_dir=str(scratch / "sft"), max_steps=1, per_device_train_batch_size=2, max_length=32,
    report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, dataloader_num_workers=0,
)
trainer = SFTTrainer(model=str(model), args=config, train_dataset=by_card)
result = trainer.train()
seen["sft_steps"] = result.global_step
seen["sft_loss_finite"] = math.isfinite(result.training_loss)
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, hf_teacher) -> Path:
    directory = tmp_path_factory.mktemp("loads")
    seeds = directory / "seeds.jsonl"
    rows = [
        {"instruction": text, "topic": f"topic {i}", "level": "easy"}
        for i, text in enumerate(QUICK_INSTRUCTIONS)
    ]
    lines = [json.dumps(row) for row in rows] + [json.dumps({"question": "no instruction"})]  # rejected/
    seeds.write_text("\n".join(lines) + "\n")
    benchmark = directory / "bench.jsonl"  # a local benchmark, so the `contamination` column exists
    benchmark.write_text(
        json.dumps({"text": "an item that no response of this run will ever contain"}) + "\n"
    )
    recipe = {
        "name": "loads",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction", "carry_fields": ["topic", "level"]},
        "teachers": [{"backend": "transformers", "model": "embedded:smollm2", "dtype": "float32"}],
        "sampling": {"temperature": 0, "max_tokens": 24},
        "filters": {"unterminated": False},
        "generation": {"batch_size": 2},
        "dedup": {"enabled": True},
        "decontaminate": {"benchmarks": [{"name": "mine", "path": str(benchmark)}]},
    }
    with Pipeline.from_recipe(recipe, teachers=[hf_teacher]) as pipeline:
        pipeline.run(directory / "out", progress=False)
    return directory / "out"


def test_run_directory_loads_in_datasets_pandas_polars_and_trl(
    run_dir: Path, embedded_model_dir: Path, tmp_path: Path
) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    accepted = manifest["funnel"]["accepted"]
    assert accepted == len(QUICK_INSTRUCTIONS) and manifest["funnel"]["seeds_quarantined"] == 1
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", LOADERS, str(run_dir), str(embedded_model_dir), str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    rows = (seen["parquet_rows"], seen["card_rows"], seen["pandas_rows"], seen["polars_rows"])
    assert rows == (accepted,) * 4 and seen["card_ids"]
    assert seen["rejected_rows"] == 1
    assert seen["seed_fields"] == [{"key": "topic", "value": "topic 0"}, {"key": "level", "value": "easy"}]
    assert seen["features"]["seed_fields"] == "List({'key': Value('string'), 'value': Value('string')})"
    assert seen["minhash_length"] == 128
    for column in ("minhash", "duplicate_of", "similarity", "contamination", "verdicts", "messages"):
        assert column in seen["features"]
    assert seen["polars_seed_fields"].startswith("List(Struct(")
    assert seen["sft_steps"] == 1 and seen["sft_loss_finite"]


def test_card_states_licence_sampling_seeds_and_cut_samples(run_dir: Path) -> None:
    card = (run_dir / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    header = yaml.safe_load(front)
    assert header["license"] == "apache-2.0"  # the embedded SmolLM2
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}
    ]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    seeds = manifest["seeds"]
    assert seeds["sha256"] == hashlib.sha256(Path(seeds["path"]).read_bytes()).hexdigest()
    assert f"`{seeds['path']}` (sha256 `{seeds['sha256']}`)" in body
    assert "Sampling (greedy): temperature 0.0, top_p 0.95, max_tokens 24" in body
    assert "licence `apache-2.0`" in body


def test_card_share_cut_at_max_tokens(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rejected = pq.read_table(run_dir / "rejected").to_pylist()
    generated = [
        *pq.read_table(run_dir / "data").to_pylist(),
        *(r for r in rejected if r["stage"] != "seeds"),
    ]
    finish = [row["finish_reason"] for row in generated]
    cut = finish.count("length")
    assert len(finish) == manifest["funnel"]["samples"] and cut >= 1  # 24 tokens cut SmolLM2 short
    assert manifest["funnel"]["cut_at_max_tokens"] == cut
    card = (run_dir / "README.md").read_text()
    samples = len(finish)
    assert f'`finish_reason = "length"`): {cut} of {samples} ({cut / samples:.1%})' in card


def test_model_license_from_a_model_directory(tmp_path: Path) -> None:
    with_readme = tmp_path / "a"
    with_readme.mkdir()
    (with_readme / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\n# A model\n")
    with_config = tmp_path / "b"
    with_config.mkdir()
    (with_config / "config.json").write_text(json.dumps({"license": "llama3.1"}))
    (tmp_path / "c").mkdir()
    assert model_license(str(with_readme)) == "mit"
    assert model_license(str(with_config)) == "llama3.1"
    assert model_license(str(tmp_path / "c")) is None
    assert model_license("org/some-hub-model") is None
    assert model_license("embedded:smollm2") == "apache-2.0"
