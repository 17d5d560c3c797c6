"""`marport bench` (every step), `--quick` (small counts, one repetition), `--only STEP` (merged into the results):
bench/results/latest.json in the workdir, then BENCHMARKS.md's tables from it. Everything runs on this machine:
TorchServe and Ray Serve on free loopback ports, the clients in this process."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch

from marport.workspace import current

from .handler_calls import gpu_serving_bench, overhead_bench
from .plan import CORES, QUICK, Plan, cpu_name
from .precision import precision_bench
from .ray_bench import ray_bench
from .respiratory_bench import respiratory_bench
from .sentiment_bench import sentiment_bench
from .served import log
from .tables import results_dir, write_tables


def machine() -> dict:
    import importlib.metadata as md

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=current().root, capture_output=True, text=True)
    return {"cpu": cpu_name(), "cores": CORES, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": md.version("transformers"), "torchserve": md.version("torchserve"),
            "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d")}


def _gpu(plan: Plan, result: dict) -> dict | None:
    """The GPU step where this machine has CUDA (CI never needs one), or a result measured on a lent GPU machine."""
    if plan.gpu_result:
        return json.loads(Path(plan.gpu_result).read_text())
    if not torch.cuda.is_available():
        log("GPU serving: skipped, no CUDA device here")
        return None
    return gpu_serving_bench(plan)


# In order: each step may read what the ones before it found (precision uses the sentiment step's settings).
STEPS: dict[str, Callable[[Plan, dict], dict | None]] = {
    "sentiment": lambda plan, _: sentiment_bench(plan),
    "precision": lambda plan, result: precision_bench(plan, result["sentiment"]["settings"]),
    "respiratory": lambda plan, _: respiratory_bench(plan),
    "overhead": lambda plan, _: overhead_bench(plan), "ray": lambda plan, _: ray_bench(plan), "gpu_serving": _gpu}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition: checks the harness")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/latest.json in the workdir)")
    parser.add_argument("--only", choices=sorted(STEPS), help="run one step and merge it into the existing results")
    parser.add_argument("--gpu-result", type=Path,
                        help="with --only gpu_serving: record this result of bench/gpu_device.sh on a GPU machine")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite BENCHMARKS.md's tables from the results file")


def run(args: argparse.Namespace) -> None:
    """`marport bench`: every step, or one (--only), in the current workspace."""
    out = args.out or results_dir() / ("quick.json" if args.quick else "latest.json")
    if args.report_only:
        print(write_tables(json.loads(out.read_text())))
        return
    plan = QUICK if args.quick else Plan()
    plan.gpu_result = args.gpu_result
    started = time.perf_counter()
    result = json.loads(out.read_text()) if args.only else {"machine": machine(), "plan": vars(plan)}
    for name, step in STEPS.items():
        if args.only in (None, name):
            log(name)
            result[name] = step(plan, result)
            result["machine"][f"{name}_commit"] = machine()["commit"]
    result["seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {out} ({result['seconds'] / 60:.1f} min)")
    if not args.quick:  # a smoke run never replaces the published tables
        print(write_tables(result))
