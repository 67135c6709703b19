from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthkiln.engine.config import apply_override, load_recipe
from synthkiln.engine.errors import RecipeError
from tests.conftest import write_recipe

BASE = """
name = "t"
[seeds]
path = "seeds.jsonl"
[task]
kind = "reasoning"
"""


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, BASE))
    assert recipe.seeds.path == str(tmp_path / "seeds.jsonl")
    assert recipe.teachers[0].backend == "transformers"
    assert recipe.teachers[0].model == "embedded:smollm2"
    assert recipe.task.question_field == "question"
    assert recipe.output_dir == Path("out/t")
    # output.dir in the file is relative to the file, like every path there; from --set, to the cwd
    placed = load_recipe(write_recipe(tmp_path, BASE + '[output]\ndir = "data/t"\n', "placed.toml"))
    assert placed.output_dir == tmp_path / "data" / "t"
    assert load_recipe(tmp_path / "placed.toml", ["output.dir=elsewhere"]).output_dir == Path("elsewhere")


def test_unknown_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE + "[sampling]\ntemprature = 0.2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'sampling.temprature'" in message
    assert "did you mean 'temperature'" in message


def test_unknown_key_inside_discriminated_union(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE + 'question_feild = "q"\n')
    with pytest.raises(
        RecipeError, match=r"unknown key 'task.question_feild'.*did you mean 'question_field'"
    ):
        load_recipe(path)


def test_unknown_key_in_teacher_list(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE + '[[teachers]]\nbackend = "vllm"\ntensor_paralel_size = 2\n')
    with pytest.raises(
        RecipeError, match=r"teachers.0.tensor_paralel_size.*did you mean 'tensor_parallel_size'"
    ):
        load_recipe(path)


def test_wrong_type_and_range(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path, BASE + '[sampling]\ntemperature = "hot"\n[generation]\nsamples_per_prompt = 0\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "'sampling.temperature'" in message and "'hot'" in message
    assert "'generation.samples_per_prompt'" in message


def test_bad_task_kind_and_missing_name(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, '[seeds]\npath = "s.jsonl"\n[task]\nkind = "poetry"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "missing key 'name'" in str(info.value)
    assert "'task'" in str(info.value) and "'poetry'" in str(info.value) and "'reasoning'" in str(info.value)


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, "name = \n")
    with pytest.raises(RecipeError, match=str(path)):
        load_recipe(path)


def test_missing_file() -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("/nonexistent/recipe.toml")


def test_yaml_recipe_equals_toml(tmp_path: Path) -> None:
    toml = load_recipe(write_recipe(tmp_path, BASE + "[sampling]\ntemperature = 0.3\n"))
    yaml_text = (
        "name: t\nseeds:\n  path: seeds.jsonl\ntask:\n  kind: reasoning\nsampling:\n  temperature: 0.3\n"
    )
    yaml = load_recipe(write_recipe(tmp_path, yaml_text, "recipe.yaml"))
    assert yaml == toml
    assert yaml.content_hash() == toml.content_hash()


def test_set_overrides_typed_values_and_list_items(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE + '[[teachers]]\nbackend = "transformers"\n')
    recipe = load_recipe(
        path,
        [
            "sampling.temperature=0",
            'sampling.stop=["\\n\\n"]',
            "generation.keep=first",
            "teachers.0.batch_size=3",
            "seeds.limit=5",
        ],
    )
    assert recipe.sampling.temperature == 0.0
    assert recipe.sampling.stop == ["\n\n"]
    assert recipe.generation.keep == "first"
    assert recipe.teachers[0].batch_size == 3
    assert recipe.seeds.limit == 5


def test_set_changes_hash_and_reports_bad_keys(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE)
    assert load_recipe(path).content_hash() != load_recipe(path, ["seed=7"]).content_hash()
    # Output placement does not decide the rows, so it does not change the hash.
    assert load_recipe(path).content_hash() == load_recipe(path, ["output.shard_rows=5"]).content_hash()
    # Nor does how hard the engines are driven: a resumed run may change it.
    assert (
        load_recipe(path).content_hash() == load_recipe(path, ["generation.max_in_flight=3"]).content_hash()
    )
    # Measuring diversity decides nothing; steering and early stopping decide the prompts.
    unsteered = load_recipe(path).content_hash()
    assert unsteered == load_recipe(path, ["diversity.embeddings=false"]).content_hash()
    assert unsteered != load_recipe(path, ["diversity.steering.enabled=true"]).content_hash()
    assert unsteered != load_recipe(path, ["diversity.stop_below=10"]).content_hash()
    assert unsteered == load_recipe(path, ["diversity.steering.lag=2"]).content_hash()  # steering off
    assert unsteered == load_recipe(path, ["cost.gpu_hour_usd=2", "bias.enabled=false"]).content_hash()
    mixed = ['mix.human=["h.jsonl"]', "mix.ratio=0.3", "mix.size=10"]
    assert unsteered != load_recipe(path, mixed).content_hash()  # the mix sets how many rows are made
    with pytest.raises(
        RecipeError, match=r"unknown key 'sampling.topp' \(from --set\); did you mean 'top_p'"
    ):
        load_recipe(path, ["sampling.topp=0.5"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(path, ["sampling.temperature"])
    with pytest.raises(RecipeError, match="no list item"):
        apply_override({"teachers": []}, "teachers.3.model=x")


def test_config_show_prints_resolved_recipe(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthkiln.engine.cli",
            "config",
            "show",
            str(path),
            "--set",
            "sampling.max_tokens=77",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "max_tokens = 77" in done.stdout
    assert 'model = "embedded:smollm2"' in done.stdout  # defaults are shown
    # What `config show` prints is itself a valid recipe with the same content.
    shown = write_recipe(tmp_path, done.stdout, "shown.toml")
    assert load_recipe(shown).content_hash() == load_recipe(path, ["sampling.max_tokens=77"]).content_hash()


def test_config_show_prints_unset_keys_as_null(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, BASE)

    def show(fmt: str) -> str:
        command = [sys.executable, "-m", "synthkiln.engine.cli", "config", "show", str(path), "--format", fmt]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    toml_text = show("toml")
    seeds = toml_text.split("[seeds]\n", 1)[1].split("\n\n", 1)[0]  # the [seeds] table's lines
    assert "# limit = null" in seeds.splitlines() and "# hf_dataset = null" in seeds.splitlines()
    assert "# dir = null" in toml_text.split("[output]\n", 1)[1].splitlines()
    shown = write_recipe(tmp_path, toml_text, "shown.toml")  # the comments keep it a valid recipe
    assert load_recipe(shown).content_hash() == load_recipe(path).content_hash()
    assert yaml.safe_load(show("yaml"))["seeds"]["limit"] is None
    assert json.loads(show("json"))["seeds"]["limit"] is None  # present (a KeyError if omitted)
