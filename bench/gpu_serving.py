"""Serving on a GPU, side by side at B = 256: `marport bench` runs this step only where CUDA is present.

Same texts (short reviews), same run, roberta-base size:

- bare: the model alone in bf16, the texts tokenised beforehand, sorted by length and cut into 16k-token
  micro-batches already on the GPU: what the arithmetic allows;
- marport: the archive's handler as `marport build --device gpu` packs it (handler.devices.gpu), driven as
  TorchServe drives it (`handle(256 requests, context)`, text/plain bodies), with one worker process and with
  the GPU archive's workers per GPU, all on the one GPU.

Worker processes start from a shared barrier; a rate is all texts over the span from the first start to the
last finish, the median of `reps`. No TorchServe is needed (the GPU machines have no Java): the handlers get
TorchServe's own Context where `ts` is installed and a stand-in otherwise.

On a lent GPU machine without the project's set-up (torch and transformers, no network): `make gpu-kit` here
writes build/gpu-kit (the demo tokenizer and the wheels that machine lacks), and `bench/gpu_device.sh` there runs
`python -m marport.bench.gpu_serving` in one call; `marport bench --only gpu --gpu-result FILE` records its JSON
(docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .served import log

# A row's workers report within this or the row has hung (a row takes under a minute on a GPU); it fits a lent GPU
# machine's 600 s call with the rows before it written (gpu_serving_bench's `save`).
RESULT_TIMEOUT_S = 300
BARE_BUDGET = 16384  # padded tokens per micro-batch of the bare model (its best on an H200)
# Settings tried beside the shipped GPU ones, as (workers, handler settings): at B = 256 the GPU's `auto` (no
# padding floor, 16k tokens) pads a call's texts to its longest in one or two passes; a floor trades padded tokens
# for launches, a larger budget the other way; and twice the shipped workers per GPU says whether more CPU work
# overlapping the GPU's pays; last, torch.compile (handler.compile, dynamic shapes, warmed at load: a minute or two
# of compiling, so a run cut short loses only this row). What the GPU defaults are to be checked against.
GPU_SWEEP = ((1, {"min_padding_efficiency": 0.5}), (1, {"min_padding_efficiency": 0.8}), (1, {"batch_tokens": 65536}),
             (4, {}), (1, {"compile": True}))


def bare_rate(checkpoint: Path, texts: list[str], device: torch.device, dtype: torch.dtype, reps: int,
              budget: int = BARE_BUDGET) -> float:
    """Texts/s of the model alone: pre-tokenised, length-sorted micro-batches of at most `budget` padded tokens."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).to(device=device, dtype=dtype).eval()
    ids = sorted(tokenizer(texts, truncation=True, max_length=512)["input_ids"], key=len)
    batches, group = [], []
    for row in ids:
        if group and (len(group) + 1) * len(row) > budget:
            batches.append(group)
            group = []
        group.append(row)
    batches.append(group)
    inputs = []
    for group in batches:
        padded = tokenizer.pad({"input_ids": group}, return_tensors="pt")
        inputs.append({k: padded[k].to(device) for k in ("input_ids", "attention_mask")})

    def one_pass() -> float:
        _sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in inputs:
                model(**batch)
        _sync(device)
        return time.perf_counter() - started

    one_pass()  # kernel selection and allocation, untimed
    return len(texts) / statistics.median(one_pass() for _ in range(reps))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(kind: str, checkpoint: str, gpu: int | None, texts: list[str], reps: int, barrier, results,
            settings: dict | None = None) -> None:
    """One serving worker process: its handler (ours with `settings` over its handler section), its share of the
    texts, `reps` timed passes from the barrier."""
    from .handle import BATCH, drive, ours, worker_logging

    with worker_logging(), contextlib.redirect_stdout(io.StringIO()):
        handler, context = ours(Path(checkpoint), gpu, settings)
        drive(handler, context, texts[: 2 * BATCH], BATCH)  # first-call paths, untimed
        device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
        for rep in range(reps):
            barrier.wait()
            started = time.perf_counter()
            drive(handler, context, texts, BATCH)
            _sync(device)
            results.put((rep, started, time.perf_counter(), len(texts)))


def served_rate(kind: str, checkpoint: Path, texts: list[str], gpu: int | None, workers: int, reps: int,
                settings: dict | None = None) -> float:
    """Texts/s of `workers` processes of a handler (`marport`, with `settings` if given, or `hf_example`)
    sharing the texts."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, daemon=True,
                         args=(kind, str(checkpoint), gpu, texts[part::workers], reps, barrier, results, settings))
             for part in range(workers)]
    for proc in procs:
        proc.start()
    import queue

    done: list = []
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    try:
        while len(done) < workers * reps:
            try:
                done.append(results.get(timeout=1.0))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} worker(s) exited with {failed} before reporting" if failed
                                       else f"{kind} workers reported nothing in {RESULT_TIMEOUT_S} s")
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    rates = []
    for rep in range(reps):
        passes = [d for d in done if d[0] == rep]
        rates.append(sum(n for *_, n in passes) / (max(d[2] for d in passes) - min(d[1] for d in passes)))
    return statistics.median(rates)


def gpu_serving_bench(plan: Any, checkpoint: Path | None = None, gpu: int | None = 0,
                      texts: list[str] | None = None, save: Callable[[dict], None] | None = None) -> dict:
    """The side-by-side; `gpu=None` runs the same harness on the CPU (what the tests check it with). `save` is
    handed the result so far after each row, so that a run cut short keeps what it measured."""
    import yaml

    from marport.resources import model_config

    from .workloads import realsize_checkpoint, short_texts

    checkpoint = checkpoint or realsize_checkpoint()
    texts = texts or short_texts(1536 if plan.quick else 6144)
    reps = 1 if plan.quick else 3
    device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
    workers = int(yaml.safe_load(model_config("sentiment").read_text())["handler"]["devices"]["gpu"]["workers_per_gpu"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"GPU serving side by side on {name}: {len(texts)} texts, B = 256")
    result: dict = {"device": name, "torch": torch.__version__, "texts": len(texts), "batch": 256,
                    "date": time.strftime("%Y-%m-%d"), "workers_per_gpu": workers}

    def done(line: str) -> None:
        log(line)
        if save:
            save(result)

    result["bare_bf16"] = bare_rate(checkpoint, texts, device, torch.bfloat16, reps)
    done(f"  bare model, bf16: {result['bare_bf16']:.0f} texts/s")
    for key, kind, n in (("marport_1_worker", "marport", 1), (f"marport_{workers}_workers", "marport", workers)):
        result[key] = served_rate(kind, checkpoint, texts, gpu, n, reps)
        done(f"  {key}: {result[key]:.0f} texts/s")
    # The goals' figures, before the sweep: a run cut short in it still has them.
    best = max(result["marport_1_worker"], result[f"marport_{workers}_workers"])
    result["share_of_bare"] = best / result["bare_bf16"]
    done(f"  best marport: {result['share_of_bare']:.0%} of the bare model")
    sweep = GPU_SWEEP[:1] if plan.quick else GPU_SWEEP
    result["sweep"], result["sweep_planned"] = [], len(sweep)
    for n, settings in sweep:
        try:
            rate = served_rate("marport", checkpoint, texts, gpu, n, reps, settings)
        except RuntimeError as exc:  # a setting the device cannot take (memory, say) costs its row, not the step
            log(f"  marport, {n} worker(s), {settings}: failed ({exc})")
            continue
        result["sweep"].append({"workers": n, "settings": settings, "texts_per_s": rate})
        done(f"  marport, {n} worker(s), {settings}: {rate:.0f} texts/s")
    return result


# What the sentiment handler's path imports that the lent GPU machines' image lacks (device tool, KINDS.md): the
# answers' JSON writer and TorchServe's Python side (its Context and metrics cache), as the image's Python takes them.
KIT_WHEELS = ("orjson", "torchserve")
KIT_PYTHON = "3.12"
KIT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def make_kit(kit: Path) -> None:
    """What a GPU machine with torch and transformers needs carried to run this step: the demo tokenizer (the
    real-size model is built there from it) and KIT_WHEELS at this project's pins."""
    from transformers import AutoTokenizer

    from marport.workspace import current

    AutoTokenizer.from_pretrained(current().checkpoint("sentiment")).save_pretrained(kit / "tokenizer")
    pins = dict(line.split("==", 1) for line in (current().root / "requirements" / "constraints.txt").read_text().split()
                if "==" in line)
    wanted = [f"{name}=={pins[name]}" for name in KIT_WHEELS]
    platforms = [arg for platform in KIT_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", KIT_PYTHON, "--implementation", "cp", *platforms, "-d", str(kit / "wheels"),
                    *wanted], check=True)
    print(f"{kit}: tokenizer and {', '.join(wanted)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The GPU side-by-side at B = 256, on a machine without the "
                                     "project's set-up (bench/gpu_device.sh), or the kit it needs (--kit).")
    parser.add_argument("--kit", type=Path, help="write the kit into this folder and stop (here, not on the GPU)")
    parser.add_argument("--tokenizer", type=Path, help="the demo tokenizer's folder (default: the demo checkpoint)")
    parser.add_argument("--out", type=Path, default=Path("gpu_serving.json"), help="where the results go (JSON)")
    parser.add_argument("--rehearse", action="store_true",
                        help="the same steps on the CPU with the tiny model and small counts: checks the run")
    args = parser.parse_args(argv)
    if args.kit:
        return make_kit(args.kit)
    from .handle import tiny_checkpoint
    from .plan import QUICK, Plan
    from .workloads import realsize_checkpoint, short_texts

    def save(result: dict) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if args.rehearse:
        save(gpu_serving_bench(QUICK, tiny_checkpoint(tokenizer_dir=args.tokenizer), gpu=None,
                               texts=short_texts(512), save=save))
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device here (--rehearse runs the same steps on the CPU)")
    else:
        save(gpu_serving_bench(Plan(), realsize_checkpoint(tokenizer_dir=args.tokenizer), gpu=0, save=save))
    log(f"written: {args.out}")


if __name__ == "__main__":
    main()
