"""`synthkiln mix` on real human data (GSM8K train) and a synthkiln dataset directory."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.cli import format_funnel, main, run_state
from synthkiln.engine.corpus.mix import choose_examples, mix, synthetic_count
from synthkiln.engine.errors import SynthkilnError
from tests.engine.scripted import ScriptedTeacher

SYNTHETIC_ROWS = 300


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthkiln dataset directory of 300 accepted chat rows."""
    root = tmp_path_factory.mktemp("synthetic")
    seeds = root / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"instruction": f"Explain item {i}."}) + "\n" for i in range(SYNTHETIC_ROWS))
    )

    def answer(content: str, sampling: object) -> list[str]:
        number = content.split("item ")[1].split(".")[0]
        return [
            f"Item {number} is explained here in its own words, case {number} of many, {'z' * int(number)}"
        ]

    recipe = {
        "name": "synthetic",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "filters": {"refusal": False, "unterminated": False},
        "dedup": {"enabled": False},
    }
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(answer)]) as pipeline:
        manifest = pipeline.run(root / "dataset", progress=False)
    assert manifest["funnel"]["accepted"] == SYNTHETIC_ROWS
    return root / "dataset"


@pytest.fixture(scope="module")
def gsm8k_train(gsm8k_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]


def mix_cli(out: Path, synthetic: list[Path], human: list[Path], *options: str) -> int:
    return main(
        ["mix", "--synthetic", *map(str, synthetic), "--human", *map(str, human), "--out", str(out), *options]
    )


def loaded(out: Path) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")


def test_exact_share_of_examples_without_repeats(
    tmp_path: Path,
    synthetic_dir: Path,
    gsm8k_dir: Path,
    gsm8k_train: list[dict],
    capsys: pytest.CaptureFixture,
) -> None:
    human = gsm8k_dir / "train.jsonl"
    options = ["--ratio", "0.3", "--prompt-field", "question", "--response-field", "answer", "--seed", "7"]
    assert mix_cli(tmp_path / "mix", [synthetic_dir], [human], *options) == 0
    rows = loaded(tmp_path / "mix")
    sources = rows["source"]
    synthetic, total = sources.count("synthetic"), len(sources)
    assert synthetic == SYNTHETIC_ROWS  # the short side is used whole...
    assert abs(synthetic - 0.3 * total) <= 1  # ...at the share, to one example
    assert total - synthetic == 701  # the most human rows 0.3 allows: 300 / 1001
    assert len(set(zip(rows["origin_file"], rows["origin_row"], strict=True))) == total  # no repeats
    assert "human" in sources[:SYNTHETIC_ROWS] and "synthetic" in sources[-300:]  # shuffled together
    for row in rows:
        if row["source"] == "human":  # each human row is its GSM8K line, as one exchange
            line = gsm8k_train[row["origin_row"] - 1]
            assert row["messages"] == [
                {"role": "user", "content": line["question"]},
                {"role": "assistant", "content": line["answer"]},
            ]
            assert row["lineage_depth"] == 0
        else:
            assert row["lineage_depth"] == 1 and row["messages"][-1]["content"].startswith("Item ")
    manifest = json.loads((tmp_path / "mix" / "manifest.json").read_text())
    assert manifest["shortfall"] == {"synthetic_left_out": 0, "human_left_out": len(gsm8k_train) - 701}
    assert f"left out 0 synthetic and {len(gsm8k_train) - 701} human rows" in capsys.readouterr().out
    assert "synthetic share of rows: 0.2997" in (tmp_path / "mix" / "README.md").read_text()

    # The same seed gives the same rows in the same order; another seed another sample and order.
    assert mix_cli(tmp_path / "again", [synthetic_dir], [human], *options) == 0
    assert loaded(tmp_path / "again")["id"] == rows["id"]
    other = [*options[:-1], "8"]
    assert mix_cli(tmp_path / "other", [synthetic_dir], [human], *other) == 0
    reseeded = loaded(tmp_path / "other")
    assert set(reseeded["id"]) != set(rows["id"]) and len(reseeded) == total


def test_short_human_side_and_synthetic_majority(tmp_path: Path, synthetic_dir: Path, capsys) -> None:
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"text": f"A human note, number {i}."}) + "\n" for i in range(100)))
    assert mix_cli(tmp_path / "half", [synthetic_dir], [human], "--ratio", "0.5") == 0
    rows = loaded(tmp_path / "half")
    assert rows["source"].count("synthetic") == 100 and rows["source"].count("human") == 100
    assert all(r["text"].startswith("A human note") for r in rows if r["source"] == "human")
    assert "left out 200 synthetic and 0 human rows" in capsys.readouterr().out

    # A synthkiln directory given as human data is refused: its rows say they are synthetic.
    assert mix_cli(tmp_path / "laundered", [human], [synthetic_dir], "--ratio", "0.3") == 2
    assert (
        "a synthetic row (source 'synthetic', lineage_depth 1) given as human data" in capsys.readouterr().err
    )
    assert mix_cli(tmp_path / "majority", [synthetic_dir], [human], "--ratio", "0.6") == 2
    assert "above the largest synthetic share allowed (0.5)" in capsys.readouterr().err
    assert not (tmp_path / "majority").exists()
    allowed = ["--ratio", "0.6", "--allow-synthetic-majority"]
    assert mix_cli(tmp_path / "majority", [synthetic_dir], [human], *allowed) == 0
    assert loaded(tmp_path / "majority")["source"].count("human") == 100


def test_exact_share_of_tokens(tmp_path: Path, synthetic_dir: Path, gsm8k_dir: Path) -> None:
    from transformers import AutoTokenizer

    from synthkiln.engine.models import resolve_model

    options = [
        "--ratio",
        "0.25",
        "--by",
        "tokens",
        "--prompt-field",
        "question",
        "--response-field",
        "answer",
    ]
    assert mix_cli(tmp_path / "tokens", [synthetic_dir], [gsm8k_dir / "train.jsonl"], *options) == 0
    rows = loaded(tmp_path / "tokens")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2"))
    counted = {"synthetic": 0, "human": 0}
    for row in rows:
        text = "\n".join(m["content"] for m in row["messages"])
        counted[row["source"]] += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    share = counted["synthetic"] / sum(counted.values())
    assert abs(share - 0.25) <= 0.001
    assert rows["source"].count("synthetic") >= SYNTHETIC_ROWS - 2  # the synthetic side nearly whole


def test_the_share_holds_within_each_category(tmp_path: Path) -> None:
    def write(name: str, count: dict[str, int]) -> Path:
        path = tmp_path / f"{name}.jsonl"
        lines = [
            json.dumps({"prompt": f"{name} {domain} {i}?", "response": "Yes.", "domain": domain})
            for domain, n in count.items()
            for i in range(n)
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    synthetic = write("synthetic", {"math": 40, "code $5": 10})  # "$5": not TeX in the report's labels
    human = write("human", {"math": 200, "code $5": 100})
    assert mix_cli(tmp_path / "by", [synthetic], [human], "--ratio", "0.2", "--by-field", "domain") == 0
    rows = loaded(tmp_path / "by")
    assert "code $5" in (tmp_path / "by" / "report.html").read_text()
    for domain, synthetic_rows in (("math", 40), ("code $5", 10)):
        sources = [r["source"] for r in rows if r["category"] == domain]
        assert sources.count("synthetic") == synthetic_rows  # the short side, whole
        assert abs(synthetic_rows - 0.2 * len(sources)) <= 1  # 0.2 within the domain, to one example
        assert sources.count("human") >= 4 * synthetic_rows


def test_bad_inputs_are_named(tmp_path: Path, capsys) -> None:
    human = tmp_path / "human.jsonl"
    human.write_text(json.dumps({"body": "no known field"}) + "\n")
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text(
        json.dumps({"prompt": "Hi?", "response": "Hello."})
        + "\n"
        + json.dumps({"prompt": "Why?", "response": ""})
        + "\n"
    )
    assert mix_cli(tmp_path / "a", [synthetic], [human], "--ratio", "0.3") == 2
    err = capsys.readouterr().err
    assert f"{synthetic} row 2: field 'response' is empty" in err
    fine = tmp_path / "fine.jsonl"
    fine.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    assert mix_cli(tmp_path / "b", [fine], [human], "--ratio", "0.3") == 2
    err = capsys.readouterr().err
    assert f"{human}: no 'messages' field" in err and "fields: body" in err and "Traceback" not in err


def test_a_run_with_a_mix_keeps_the_share_after_losses(tmp_path: Path, gsm8k_dir: Path) -> None:
    """One seed in four fails the verifier, and the human data holds planted near-duplicates of
    accepted rows and GSM8K test questions: the mix still has exactly the asked share."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Explain item {i}."}) + "\n" for i in range(40)))

    def text(number: int) -> str:
        return (
            f"Item {number} is explained here in its own words, case {number} of many, {'z' * (number + 1)}"
        )

    def answer(content: str, sampling: object) -> list[str]:
        number = int(content.split("item ")[1].split(".")[0])
        return [text(number) + ("" if number % 4 == 0 else " VALID")]

    questions = [
        json.loads(line)["question"] for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()[:3]
    ]
    human = tmp_path / "human.jsonl"
    unique = [
        {"prompt": f"Human question {i}?", "response": f"A person answers {i}: {'y' * (i + 1)} and more."}
        for i in range(60)
    ]
    duplicates = [
        {"prompt": "Copy?", "response": text(n) + " VALID"} for n in (1, 2, 3, 5, 6)
    ]  # accepted rows
    contaminated = [
        {"prompt": q, "response": f"Answer {k}: {'w' * (k + 1)} is it."} for k, q in enumerate(questions)
    ]
    human.write_text("".join(json.dumps(r) + "\n" for r in unique + duplicates + contaminated))
    recipe = {
        "name": "mixed",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction"},
        "filters": {"refusal": False, "unterminated": False},
        "generation": {"batch_size": 4},
        "verify": {"verifiers": [{"name": "regex", "pattern": "VALID"}]},
        "decontaminate": {"benchmarks": [{"name": "gsm8k", "path": str(gsm8k_dir / "test.jsonl")}]},
        "mix": {"human": [str(human)], "ratio": 0.3, "size": 40},
    }
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(answer)]) as pipeline:
        manifest = pipeline.run(tmp_path / "run", progress=False)
    assert manifest["complete"] and manifest["stopped"]["mix_target"] == 12
    assert run_state(manifest).startswith("complete: the mix's 12 accepted rows are made")
    assert "mix: 40 rows, synthetic share 0.3" in format_funnel(manifest)
    assert (
        manifest["funnel"]["accepted"] == 12 and manifest["funnel"]["rejected"]["verify"]["regex:failed"] >= 3
    )
    assert manifest["mix"]["human_removed"] == {"near-duplicate": 5, "contaminated": 3}
    rows = loaded(tmp_path / "run-mix")
    assert len(rows) == 40
    assert rows["source"].count("synthetic") == 12 and rows["source"].count("human") == 28
    human_answers = [r["messages"][-1]["content"] for r in rows if r["source"] == "human"]
    assert not {d["response"] for d in duplicates} & set(human_answers)
    assert not set(questions) & {r["messages"][0]["content"] for r in rows if r["source"] == "human"}
    assert json.loads((tmp_path / "run-mix" / "manifest.json").read_text())["synthetic_share"] == 0.3


def test_shares_round_halves_down_and_refuse_an_empty_side() -> None:
    assert synthetic_count(0.5, 3) == 1  # never a synthetic majority
    assert choose_examples(2, 1, 0.5) == (1, 1)
    assert choose_examples(300, 7473, 0.3) == (300, 701)
    assert choose_examples(10, 100, 0.2, size=20) == (4, 16)
    with pytest.raises(SynthkilnError, match=r"too few rows to mix at ratio 0\.3"):
        mix([], [{"id": str(i), "category": None, "source": "human"} for i in range(10)], 0.3, seed=0)
