"""What the benchmarks serve: a real-size RoBERTa, texts of two lengths, 10 s recordings."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np

from marport.sentiment_data import LABELS, load_splits
from marport.workspace import current


def bench_dir() -> Path:
    return current().build / "bench"  # the benchmarks' scratch folder


# roberta-base: 12 layers, hidden 768, 12 heads, FFN 3072, 50265 tokens, 514 positions.
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)


TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=514, type_vocab_size=1)  # a forward pass that costs next to nothing


def realsize_checkpoint(out: Path | None = None, tokenizer_dir: Path | None = None, size: dict = ROBERTA_BASE) -> Path:
    """A randomly initialised RoBERTa classifier (roberta-base size by default) with the demo model's tokenizer, or
    the one in `tokenizer_dir` (a GPU machine gets only the tokenizer). Random weights do the same arithmetic as
    trained ones, and no hub is reachable; the demo tokenizer splits real text into as many tokens as a real
    model's would, its ids all inside roberta-base's vocabulary."""
    out = out or bench_dir() / ("roberta-base-random" if size is ROBERTA_BASE else "roberta-tiny")
    demo = tokenizer_dir or current().checkpoint("sentiment")
    if (out / "config.json").exists() and _same_file(out / "tokenizer.json", demo / "tokenizer.json"):
        return out
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(demo)
    torch.manual_seed(0)
    config = RobertaConfig(**{"vocab_size": len(tokenizer), **size}, num_labels=3, id2label=dict(enumerate(LABELS)),
                           label2id={n: i for i, n in enumerate(LABELS)}, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.read_bytes() == b.read_bytes()


def short_texts(n: int, seed: int = 0) -> list[str]:
    """Product-review length: one or two corpus sentences, 10-40 tokens."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(_pool(), rng.choice([1, 1, 2]))) for _ in range(n)]


def long_texts(n: int, seed: int = 1, sentences: int = 18) -> list[str]:
    """About 256 tokens: a long review stitched from corpus sentences."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(_pool(), sentences)) for _ in range(n)]


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[str, ...]:
    """Every corpus sentence, in a fixed order (the split is by hash, so this order is stable)."""
    return tuple(e.text for rows in load_splits().values() for e in rows)


def recordings(n: int, seconds: float = 10.0, rate: int = 48000, seed: int = 2) -> list[bytes]:
    """10 s, 48 kHz, 16-bit WAV recordings from the synthetic generator."""
    import io

    import soundfile as sf

    from marport.synth_audio import recording

    rng, out = np.random.default_rng(seed), []
    for i in range(n):
        sf.write(buf := io.BytesIO(), recording(rng, bool(i % 2), rate, seconds, rng.uniform(150, 400)), rate,
                 format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def recording_load(distinct: int, total: int) -> list[bytes]:
    """`total` request bodies cycling through `distinct` recordings."""
    bodies = recordings(distinct)
    return [bodies[i % distinct] for i in range(total)]
