"""The in-process ceiling: a model on every core of this machine, without HTTP or TorchServe.

The cores can be used two ways, and TorchServe can do either: one process with a torch thread per core, or one
single-thread process per core side by side. Both are measured on the same inputs in the same batches; the
ceiling is the faster, so served throughput is never compared with a layout that serving beats.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

from .parallel import rate


def sentiment_answers(model, texts: list[str], batch: int) -> list:
    """The model's answers in handler calls of `batch` texts, as TorchServe would group them."""
    return [a for i in range(0, len(texts), batch) for a in model.predict_texts(texts[i : i + batch])]


def respiratory_answers(model, bodies: list[bytes], batch: int) -> list:
    """Answers for WAV bodies in calls of `batch` (decoding included)."""
    return [a for i in range(0, len(bodies), batch) for a in model.predict([model.decode(b) for b in bodies[i : i + batch]])]


ANSWERS = {"sentiment": sentiment_answers, "respiratory": respiratory_answers}


def load(kind: str, model_dir: str):
    from marport.handlers.endpoint import load_model
    from marport.handlers.respiratory import Respiratory
    from marport.handlers.sentiment import Sentiment

    return load_model({"sentiment": Sentiment, "respiratory": Respiratory}[kind], model_dir)


def _work(kind: str, model_dir: str, make_inputs: Callable[[], list], batch: int, threads: int, part: int,
          parts: int) -> Callable[[], int]:
    import torch

    model = load(kind, model_dir)
    torch.set_num_threads(threads)
    items = make_inputs()[part::parts]
    ANSWERS[kind](model, items[:batch], batch)
    return lambda: len(ANSWERS[kind](model, items, batch))


def ceiling(kind: str, model_dir: str, make_inputs: Callable[[], list], batch: int,
            layouts: Iterable[tuple[int, int]], reps: int) -> dict:
    """The faster of `layouts` (processes x threads); `make_inputs` must be picklable (a module function or partial)."""
    rates = {f"{p}x{t}": rate(partial(_work, kind, model_dir, make_inputs, batch, t), p, reps) for p, t in layouts}
    best = max(rates, key=rates.__getitem__)
    return {"per_s": rates[best], "layout": best, "by_layout": rates}
