"""Build the demo sentiment checkpoint: a small RoBERTa trained on the shipped corpus.

No model hub is reachable from where this project builds, so the default model is
made here: a byte-level BPE tokenizer trained with `tokenizers`, a
`RobertaForSequenceClassification` from a small `RobertaConfig`, fine-tuned on
`data/sentiment_corpus.tsv`. These are demo weights; bring a real checkpoint with
`python -m marport.build sentiment --checkpoint DIR`.

    python -m marport.train_sentiment --out build/sentiment/checkpoint
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from tokenizers.processors import RobertaProcessing
from tqdm import tqdm
from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

CORPUS = Path(__file__).parent / "data" / "sentiment_corpus.tsv"
LABELS = ["negative", "neutral", "positive"]
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
MAX_LENGTH = 512


@dataclass(frozen=True)
class TrainSettings:
    vocab_size: int = 2000
    hidden_size: int = 96
    layers: int = 2
    heads: int = 4
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 13


def read_corpus(path: Path = CORPUS) -> dict[str, list[tuple[str, int]]]:
    """{"train": [(text, label_id), ...], "test": [...]} from the shipped TSV."""
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            splits[row["split"]].append((row["text"], LABELS.index(row["label"])))
    return splits


def train_tokenizer(texts: list[str], vocab_size: int) -> RobertaTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    return RobertaTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_LENGTH,
    )


def accuracy(model, tokenizer, rows: list[tuple[str, int]]) -> float:
    model.eval()
    with torch.inference_mode():
        enc = tokenizer([t for t, _ in rows], padding=True, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).tolist()
    return sum(p == y for p, (_, y) in zip(predicted, rows)) / len(rows)


def train(out_dir: Path, settings: TrainSettings = TrainSettings()) -> dict:
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    splits = read_corpus()
    tokenizer = train_tokenizer([t for t, _ in splits["train"]], settings.vocab_size)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=settings.hidden_size * 4,
        max_position_embeddings=MAX_LENGTH + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    model = RobertaForSequenceClassification(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    rows = list(splits["train"])
    steps = settings.epochs * -(-len(rows) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=steps)
    with tqdm(total=steps, desc="training sentiment", unit="step") as bar:
        for _ in range(settings.epochs):
            model.train()
            random.shuffle(rows)
            for i in range(0, len(rows), settings.batch_size):
                chunk = rows[i : i + settings.batch_size]
                enc = tokenizer([t for t, _ in chunk], padding=True, return_tensors="pt")
                loss = model(**enc, labels=torch.tensor([y for _, y in chunk])).loss
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    metrics = {
        "train_accuracy": accuracy(model, tokenizer, splits["train"]),
        "heldout_accuracy": accuracy(model, tokenizer, splits["test"]),
        "heldout_size": len(splits["test"]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/sentiment/checkpoint"))
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    args = parser.parse_args(argv)
    metrics = train(args.out, TrainSettings(epochs=args.epochs))
    print(
        f"held-out accuracy {metrics['heldout_accuracy']:.3f} on {metrics['heldout_size']} "
        f"sentences (train {metrics['train_accuracy']:.3f}); demo weights saved to {args.out}"
    )


if __name__ == "__main__":
    main()
