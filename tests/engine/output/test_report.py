"""report.html: rendered in headless Chromium, every plot drawn, no request leaving the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from synthkiln.engine import Pipeline
from synthkiln.engine.cli import main
from synthkiln.engine.output.report import REPORT
from tests.engine.scripted import ScriptedTeacher

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
# Appended to a copy of the page: the size and content of each plot as Chromium laid it out.
MEASURE = """<script>
const plots = [...document.querySelectorAll("figure.plot svg")].map(svg => {
  const box = svg.getBoundingClientRect();
  return {section: svg.closest("section").id, width: box.width, height: box.height,
          marks: svg.querySelectorAll("path, rect, line, polyline, use").length};
});
const empty = [...document.querySelectorAll("section .empty")].map(p => p.closest("section").id);
document.body.innerHTML = "<pre id=result>" + JSON.stringify({plots, empty}) + "</pre>";
</script>"""


def rendered(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """What Chromium drew of `page`, and every URL it requested (from its network log)."""
    assert CHROMIUM is not None, "chromium-headless-shell is installed by `make` (system-packages)"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    net_log = tmp_path / "net.json"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--log-net-log={net_log}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.split('<pre id="result">')[1].split("</pre>")[0])
    log = json.loads(net_log.read_text())
    urls = [e["params"]["url"] for e in log.get("events", []) if "url" in e.get("params", {})]
    return result, urls


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Tell item {i}."}) + "\n" for i in range(24)))

    def answer(content: str, sampling: object) -> list[str]:
        number = int(content.split("item ")[1].split(".")[0])
        if number % 6 == 5:  # a near-duplicate of item 0's answer
            return ["She said the first answer of all, the very first one, with nothing else to add. VALID"]
        verdict = " VALID" if number % 4 else ""
        return [f"She said answer {number} about {'x' * (number + 1)} in a list of many words{verdict}"]

    recipe = {
        "name": "reported",
        "seeds": {"path": str(seeds)},
        "task": {"kind": "instruction", "formats": ["a list", "prose"]},
        "filters": {"refusal": False, "unterminated": False},
        "verify": {"verifiers": [{"name": "regex", "pattern": "VALID"}]},
        "output": {"shard_rows": 6},
        "diversity": {"embeddings": False},
        "cost": {"gpu_hour_usd": 2.0},
    }
    with Pipeline.from_recipe(recipe, teachers=[ScriptedTeacher(answer)]) as pipeline:
        pipeline.run(root / "out", progress=False)
    return root / "out"


def test_a_run_report_draws_every_plot_offline(run_dir: Path, tmp_path: Path) -> None:
    page = run_dir / REPORT
    assert page.is_file()  # `run` writes it at the end
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/", "") and "https://" not in html
    assert "<script" not in html and "<link" not in html and "<img" not in html
    result, urls = rendered(page, tmp_path)
    drawn = {plot["section"] for plot in result["plots"]}
    expected = {
        "funnel",
        "over-time",
        "cost",
        "diversity",
        "distributions",
        "similarity",
        "verifiers",
        "teachers",
        "bias",
    }
    assert drawn == expected
    assert all(p["width"] > 100 and p["height"] > 50 and p["marks"] > 3 for p in result["plots"]), result
    assert result["empty"] == ["contamination"]  # no benchmark listed: said, not drawn empty
    assert urls == []  # nothing requested: no URL in Chromium's network log


def test_the_network_log_would_show_a_request(tmp_path: Path) -> None:
    """The control for the check above: a page that loads one image from the network."""
    page = tmp_path / "control.html"
    page.write_text(
        '<html><body><figure class="plot"></figure><img src="http://127.0.0.1:9/probe.png"></body></html>'
    )
    _, urls = rendered(page, tmp_path)
    assert "http://127.0.0.1:9/probe.png" in urls


def test_the_report_command_and_a_mix_report(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / REPORT).unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / REPORT).read_text() == (run_dir / REPORT).read_text()  # one rendering of one directory
    human = tmp_path / "human.jsonl"
    human.write_text("".join(json.dumps({"text": f"A note by a person, {i}."}) + "\n" for i in range(40)))
    assert (
        main(
            [
                "mix",
                "--synthetic",
                str(run_dir),
                "--human",
                str(human),
                "--ratio",
                "0.3",
                "--out",
                str(tmp_path / "mix"),
            ]
        )
        == 0
    )
    result, urls = rendered(tmp_path / "mix" / REPORT, tmp_path)
    assert [p["section"] for p in result["plots"]] == ["mix"] and result["plots"][0]["marks"] > 3
    assert urls == []
