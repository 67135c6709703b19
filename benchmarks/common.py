"""What every benchmark records: the machine it ran on, and where its JSON result goes."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "gsm8k" / "train.jsonl"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def save_report(name: str, report: dict[str, Any]) -> Path:
    """Add machine info and date, write results/<name>.json, echo it; return the path."""
    report = {**report, "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    print(f"\nsaved {path}")
    return path


def best_of(runs: int, function) -> float:
    """The fastest of `runs` timed calls, in seconds."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)
