"""The bias audit: lexicon counts on hand-made texts, amplification and persona rates in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from synthkiln.engine import Pipeline
from synthkiln.engine.bias import DEFAULT_LEXICON, TermCounter
from tests.engine.scripted import ScriptedTeacher


def test_terms_are_counted_as_whole_words_and_word_sequences() -> None:
    counter = TermCounter(DEFAULT_LEXICON)
    texts = pa.array(
        [
            "She and her Mother went to the church.",  # 8 words: she, her, mother; church
            "The elderly man, a Muslim, met Black people over black coffee.",  # 11 words
            None,
            "Shepherds herd sheep; a manager is no man.",  # 'she'/'her'/'man' inside words do not count
        ]
    )
    words, counts = counter.count(texts)
    found = {group: count for group, count in zip(counter.groups, counts.tolist(), strict=True) if count}
    assert words == 8 + 11 + 8
    assert found == {
        "gender/female": 3,
        "gender/male": 2,  # "man" twice: in the second text and as the last word of the fourth
        "religion/christian": 1,
        "religion/muslim": 1,
        "age/old": 1,
        "ethnicity/black": 1,  # "black people", not "black coffee"
    }


def test_a_run_reports_amplified_groups_and_rejections_per_persona(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"instruction": f"Describe a day at work, case {i}."}) + "\n" for i in range(20))
    )

    def answer(content: str, sampling: object) -> list[str]:
        case = content.split("case ")[1].split(".")[0]
        verdict = "" if "a pilot" in content else " VALID"
        return [
            f"She starts her shift early; she checks the list, case {case} {'q' * (int(case) + 1)}.{verdict}"
        ]

    recipe = {
        "name": "audited",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction", "personas": ["a nurse", "a pilot"]},
        "filters": {"refusal": False, "unterminated": False},
        "dedup": {"enabled": False},
        "verify": {"verifiers": [{"name": "regex", "pattern": "VALID"}]},
        "output": {"shard_rows": 8},
    }
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(answer)]) as pipeline:
        manifest = pipeline.run(tmp_path / "out", progress=False)
    bias = manifest["bias"]
    # Seeds: 20 rows of 7 words, no gendered word. Responses: 12 words with she x2 and her, and "VALID"
    # for the nurse's 10 (accepted); the pilot's 10 are rejected.
    assert bias["counts"]["seeds"]["words"] == 140
    assert bias["counts"]["seeds"]["terms"]["gender/female"] == 0
    assert bias["counts"]["accepted"]["words"] == 130 and bias["counts"]["rejected"]["words"] == 120
    assert bias["counts"]["accepted"]["terms"]["gender/female"] == 30
    assert bias["counts"]["rejected"]["terms"]["gender/female"] == 30
    assert bias["per_10k_words"]["accepted"]["gender/female"] == round(10_000 * 30 / 130, 3)
    assert bias["amplification"]["gender/female"] == round((30.5 / 130) / (0.5 / 140), 3)
    assert [f["group"] for f in bias["flags"]] == ["gender/female"]
    assert bias["persona_rates"] == {
        "a nurse": {"samples": 10, "rejected_share": 0.0, "refused_share": 0.0},
        "a pilot": {"samples": 10, "rejected_share": 1.0, "refused_share": 0.0},
    }
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Bias audit" in card and "gender/female" in card and "cannot show" in card
