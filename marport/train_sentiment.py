"""Train the demo sentiment checkpoint: a pretrained RoBERTa-architecture encoder (marport/pretrained.py) fine-tuned
on three CC BY 4.0 review corpora (marport/sentiment_data.py), negative / neutral / positive. Writes a
`save_pretrained` checkpoint, metrics.json, confusion.png and MODEL_CARD.md into --out; fits `make serve`'s budget
on 2 cores (each example once, length-sorted batches, bf16 autocast where the CPU has it)."""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, recall_score
from tqdm import tqdm

from marport.handlers.placement import cpu_has_native_bf16  # noqa: E402  (the serving code's own test for native bf16)
from marport.pretrained import SOURCE, pretrained_roberta
from marport.reproducible import seed_everything
from marport.sentiment_data import LABELS, Example, everyday_eval, load_splits


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 13
    epochs: float = 1.0  # fractions allowed: 0.5 reads a (seeded) half of the training split once
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 64  # training only: 99% of the corpus fits; serving reads up to 512
    freeze_word_embeddings: bool = True  # keeps the pretrained meaning of words the corpus never shows
    bf16: bool = True  # autocast where the CPU does bf16 natively; ignored elsewhere
    pool_batches: int = 64  # length-sort within pools of this many batches: little padding, still shuffled


def _batches(lengths: list[int], settings: TrainSettings, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = settings.batch_size * settings.pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches += [chunk[i : i + settings.batch_size] for i in range(0, len(chunk), settings.batch_size)]
    rng.shuffle(batches)
    return batches


def predict_labels(model, tokenizer, texts: list[str], batch_size: int = 64) -> list[int]:
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    found = {}
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            enc = tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=512, return_tensors="pt")
            for r, p in zip(rows, model(**enc).logits.argmax(-1).tolist()):
                found[r] = p
    return [found[i] for i in range(len(texts))]


def evaluate(model, tokenizer, examples: list[Example]) -> dict:
    """Accuracy, macro-F1, per-class recall and the confusion matrix (rows: truth, columns: answer)."""
    truth = [e.label for e in examples]
    pred = predict_labels(model, tokenizer, [e.text for e in examples])
    ids = list(range(len(LABELS)))
    recall = recall_score(truth, pred, labels=ids, average=None, zero_division=0)
    polar = [(t, p) for t, p in zip(truth, pred) if LABELS[t] != "neutral"]
    return {
        "size": len(examples),
        "accuracy": float(np.mean([t == p for t, p in zip(truth, pred)])),
        "macro_f1": float(f1_score(truth, pred, labels=ids, average="macro", zero_division=0)),
        "recall": {LABELS[i]: float(r) for i, r in enumerate(recall)},
        # The check a new user makes: positive/negative sentences, a `neutral` answer counted wrong.
        "polar_accuracy": float(np.mean([t == p for t, p in polar])) if polar else None,
        "polar_size": len(polar),
        "confusion": confusion_matrix(truth, pred, labels=ids).tolist(),
    }


def _fit(model, tokenizer, ids: list, labels: list, plan: list, settings: TrainSettings) -> bool:
    """AdamW with linear warm-up and decay over the planned batches; answers whether bf16 autocast was used."""
    steps = sum(len(p) for p in plan)
    if settings.freeze_word_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = max(1, int(steps * settings.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    use_bf16 = settings.bf16 and cpu_has_native_bf16()
    model.train()
    with tqdm(total=steps, desc="fine-tuning sentiment", unit="batch") as bar:
        for batches in plan:
            for rows_ in batches:
                enc = tokenizer.pad({"input_ids": [ids[r] for r in rows_]}, return_tensors="pt")
                target = torch.tensor([labels[r] for r in rows_])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = model(**enc, labels=target).loss
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimiser.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    return use_bf16


def train(out_dir: Path, settings: TrainSettings = TrainSettings(), data: dict | None = None) -> dict:
    """Fine-tune, evaluate and save; `data` (train/validation/test example lists) defaults to the shipped corpora."""
    seed_everything(settings.seed)
    started = time.perf_counter()
    model, tokenizer = pretrained_roberta(list(LABELS))
    data = data or load_splits()
    rng = random.Random(settings.seed)
    rows = list(data["train"])
    rng.shuffle(rows)
    rows = rows[: round(len(rows) * settings.epochs)] if settings.epochs < 1 else rows
    ids = tokenizer([e.text for e in rows], truncation=True, max_length=settings.max_length)["input_ids"]
    labels = [e.label for e in rows]
    epochs = max(1, int(np.ceil(settings.epochs)))
    plan = [_batches([len(i) for i in ids], settings, rng) for _ in range(epochs)]
    use_bf16 = _fit(model, tokenizer, ids, labels, plan, settings)
    train_seconds = time.perf_counter() - started

    model.eval()
    metrics: dict[str, Any] = {
        "settings": asdict(settings) | {"bf16_used": use_bf16},
        "pretrained": SOURCE,
        "train_examples": len(rows),
        "train_seconds": round(train_seconds, 1),
        "validation": evaluate(model, tokenizer, data["validation"]),
        "test": evaluate(model, tokenizer, data["test"]),
        "everyday": evaluate(model, tokenizer, everyday_eval()),
    }
    _clear_previous(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from marport.model_card import write_sentiment_card
    from marport.plots import confusion_plot

    confusion_plot(metrics["test"]["confusion"], LABELS, out_dir / "confusion.png", title="held-out test split")
    write_sentiment_card(out_dir, metrics, data, model.config, model.num_parameters())
    return metrics


# Files this trainer writes or once wrote: removed before saving, so no stale file reaches the archive.
OWN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.json", "vocab.txt", "merges.txt", "metrics.json", "training_metrics.json", "confusion.png",
             "MODEL_CARD.md")


def _clear_previous(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OWN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=TrainSettings.seed)
    parser.add_argument("--epochs", type=float, default=TrainSettings.epochs, help="passes over the training split")
    parser.add_argument("--no-bf16", action="store_true", help="train in fp32 even where the CPU does bf16")


def run(args: argparse.Namespace, out: Path) -> None:
    report(train(out, TrainSettings(seed=args.seed, epochs=args.epochs, bf16=not args.no_bf16)), out)


def build_default(out: Path) -> None:
    """The demo checkpoint `marport build sentiment` packs: default settings."""
    report(train(out), out)


def report(metrics: dict, out: Path) -> None:
    test, everyday = metrics["test"], metrics["everyday"]
    print(
        f"held-out test ({test['size']} sentences): accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}; "
        f"positive/negative only {test['polar_accuracy']:.3f}; everyday review sentences {everyday['polar_accuracy']:.3f} "
        f"({metrics['train_seconds']:.0f} s); saved to {out}"
    )
