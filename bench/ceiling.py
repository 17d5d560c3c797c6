"""The in-process ceiling: a handler core on every core of this machine, without HTTP or TorchServe.

A machine's cores can be used two ways, and TorchServe can do either: one process with a torch
thread per core, or one single-thread process per core side by side (what single-thread workers
do). Both layouts are measured here on the same inputs in the same batches, each process started
fresh and timed from a shared barrier; the ceiling is the faster layout, so served throughput is
never compared with a layout that serving beats.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import statistics
import time
from typing import Callable, Iterable

RESULT_TIMEOUT_S = 1800


def sentiment_answers(model, texts: list[str], batch: int) -> list:
    """The sentiment core's answers in batches of `batch`, as TorchServe would group them."""
    from marport.handlers import sentiment

    return [answer for i in range(0, len(texts), batch) for answer in sentiment.predict_texts(model, texts[i : i + batch])]


def respiratory_answers(model, bodies: list[bytes], batch: int) -> list:
    """The respiratory core's answers for WAV bodies in batches of `batch`."""
    from marport.handlers import respiratory

    answers = []
    for i in range(0, len(bodies), batch):
        recordings = [respiratory.read_recording(body, model) for body in bodies[i : i + batch]]
        answers.extend(respiratory.predict(model, recordings))
    return answers


# model kind -> how this bench feeds its core a batch (the core module itself is the registry's)
BATCH_ANSWERS = {"sentiment": sentiment_answers, "respiratory": respiratory_answers}


def core_module(kind: str) -> str:
    """The model kind's core module, as marport/registry.py names it."""
    from marport.registry import MODELS

    return f"marport.handlers.{MODELS[kind].core.removesuffix('.py')}"


def _one_process(core: str, model_dir: str, make_inputs: Callable[[], list], batch: int, threads: int,
                 part: int, parts: int, reps: int, barrier, results) -> None:
    """Runs in a fresh process: its share of the inputs, `reps` times, each start at the barrier."""
    import torch
    torch.set_num_threads(threads)
    answers = BATCH_ANSWERS[core]
    model = importlib.import_module(core_module(core)).load(model_dir)
    items = make_inputs()[part::parts]
    answers(model, items[:batch], batch)  # first-call paths, untimed
    for rep in range(reps):
        barrier.wait()
        started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        answers(model, items, batch)
        results.put((rep, started, time.perf_counter(), len(items)))


def layout_rate(core: str, model_dir: str, make_inputs: Callable[[], list], batch: int, processes: int,
                threads: int, reps: int) -> float:
    """Items/s of `processes` processes x `threads` torch threads, median over `reps` timed passes."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_one_process, daemon=True,
                         args=(core, model_dir, make_inputs, batch, threads, part, processes, reps, barrier, results))
             for part in range(processes)]
    for proc in procs:
        proc.start()
    done = [results.get(timeout=RESULT_TIMEOUT_S) for _ in range(processes * reps)]
    for proc in procs:
        proc.join()
    rates = []
    for rep in range(reps):
        passes = [d for d in done if d[0] == rep]
        wall = max(end for _, _, end, _ in passes) - min(start for _, start, _, _ in passes)
        rates.append(sum(n for *_, n in passes) / wall)
    return statistics.median(rates)


def ceiling(core: str, model_dir: str, make_inputs: Callable[[], list], batch: int,
            layouts: Iterable[tuple[int, int]], reps: int) -> dict:
    """The faster of `layouts` (processes x threads); `make_inputs` must be picklable (a module function or partial)."""
    rates = {f"{p}x{t}": layout_rate(core, model_dir, make_inputs, batch, p, t, reps) for p, t in layouts}
    best = max(rates, key=rates.get)
    return {"per_s": rates[best], "layout": best, "by_layout": rates}
