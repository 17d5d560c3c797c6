"""`marport bench`: served throughput and latency against the model's own in-process ceiling.

    marport bench            # the full run (about 25 minutes on 2 cores)
    marport bench --quick    # a smoke run of every step, small counts, one repetition

Writes bench/results/latest.json in the workdir, then bench/tables.py rewrites the tables of BENCHMARKS.md
from it. The steps live beside this runner: sentiment_bench.py, precision.py, respiratory_bench.py, ray_bench.py,
gpu_serving.py; served.py serves an archive for them.
Everything runs on this machine: TorchServe on free loopback ports, the clients in this process.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from marport.workspace import current

from .plan import CORES, QUICK, Plan, cpu_name
from .respiratory_bench import respiratory_bench
from .sentiment_bench import FP32_REFERENCE, sentiment_bench
from .served import cold_start, configure, log
from .workloads import bench_dir, recordings


def results_file() -> Path:
    from .tables import results_dir

    return results_dir() / "latest.json"


def machine() -> dict:
    import importlib.metadata as md

    cpu = cpu_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=current().root, capture_output=True, text=True)
    return {
        "cpu": cpu, "cores": CORES, "python": platform.python_version(),
        "torch": torch.__version__, "transformers": md.version("transformers"), "torchserve": md.version("torchserve"),
        "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition: checks the harness")
    parser.add_argument("--out", type=Path, help="results file (default: bench/results/latest.json in the workdir)")
    parser.add_argument("--only", choices=["precision", "gpu", "ray"],
                        help="run one step and merge it into the existing results (e.g. after changing the caps)")
    parser.add_argument("--gpu-result", type=Path,
                        help="with --only gpu: record this side-by-side, measured on a GPU machine by bench/gpu_device.sh")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite BENCHMARKS.md's tables from the results file")


def run(args: argparse.Namespace) -> None:
    """`marport bench`: every step, or one (--only), in the current workspace."""
    args.out = args.out or results_file()
    if args.report_only:
        from .tables import write_tables

        print(write_tables(json.loads(args.out.read_text())))
        return
    if args.gpu_result and args.only != "gpu":
        raise SystemExit("--gpu-result goes with --only gpu")
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    from .ray_bench import ray_bench

    if args.only:
        result = json.loads(args.out.read_text())
        if args.only == "gpu":
            result["gpu_serving"] = recorded_gpu_step(args.gpu_result) if args.gpu_result else gpu_step(plan, required=True)
        elif args.only == "ray":
            result["ray"] = ray_bench(plan)
        else:
            result["precision"] = precision_step(plan, result["sentiment"]["settings"])
        result["machine"][f"{args.only}_commit"] = machine()["commit"]
        return _write(result, args)
    result = {"machine": machine(), "plan": {"reps": plan.reps, "short_texts": plan.short, "long_texts": plan.long,
                                              "recordings": plan.recordings, "quick": args.quick}}
    result["sentiment"] = sentiment_bench(plan)
    result["precision"] = precision_step(plan, result["sentiment"]["settings"])
    log("respiratory")
    result["respiratory"] = respiratory_bench(plan)
    log("cold starts")
    store = bench_dir() / "store"
    configure(store / "sentiment_base", **{"workers": 1, "threads": CORES, "batch": 8, "delay": 5}, **FP32_REFERENCE)
    result["cold_start_s"] = {
        "sentiment_base": cold_start(store, "sentiment_base", ("Lovely staff".encode(), "text/plain"), plan.cold_starts),
        "respiratory": cold_start(store, "respiratory", (recordings(1)[0], "audio/wav"), plan.cold_starts),
    }
    result["ray"] = ray_bench(plan)
    result["gpu_serving"] = gpu_step(plan)
    result["seconds"] = time.perf_counter() - started
    _write(result, args)


def gpu_step(plan: Plan, required: bool = False) -> dict | None:
    """The GPU side-by-side, where this machine has CUDA; elsewhere it is skipped (CI never needs a GPU)."""
    if not torch.cuda.is_available():
        if required:
            raise SystemExit("--only gpu needs a CUDA device; this machine has none")
        log("GPU serving: skipped, no CUDA device here")
        return None
    from .gpu_serving import gpu_serving_bench

    return gpu_serving_bench(plan)


def recorded_gpu_step(path: Path) -> dict:
    """A side-by-side measured on a GPU machine (bench/gpu_device.sh); one cut short before the goals' rows were
    all measured is refused (one cut short in the sweep is recorded, the report says how many sweep rows are missing)."""
    result = json.loads(path.read_text())
    if "share_of_bare" not in result:
        raise SystemExit(f"{path}: the GPU run stopped before the goals' rows were measured (see its log); nothing recorded")
    return result


def precision_step(plan: Plan, settings: dict) -> dict:
    from .precision import precision_bench

    log("precision, padding and compilation")
    return precision_bench(plan, settings)


def _write(result: dict, args) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out} ({result['seconds'] / 60:.1f} min for the whole run)")
    from .tables import write_tables

    if result["plan"]["quick"]:  # a smoke run never replaces the published tables
        quick = bench_dir() / "BENCHMARKS-quick.md"
        quick.write_text((current().root / "BENCHMARKS.md").read_text())
        print(write_tables(result, quick))
    else:
        print(write_tables(result))
