"""The sentiment training data: three CC BY 4.0 corpora plus the project's own sentences (marport/data/sentiment/,
attribution in its README), de-tokenised to read as people type. Splits are by a hash of the normalised text, so
the held-out sentences stay the same whatever seed trains, and a repeated sentence never sits on both sides."""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from marport import resources

LABELS = ("negative", "neutral", "positive")
TEST_FRACTION = 0.10
VALIDATION_FRACTION = 0.05


def data_dir() -> Path:
    return resources.data_dir("sentiment")


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # index into LABELS
    source: str


_SPACED_PUNCT = re.compile(r"\s+([.,!?;:%)\]}])")
_OPENING = re.compile(r"([(\[{$])\s+")
_CLITIC = re.compile(r"(\w)\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE)
_QUOTED = re.compile(r'"\s*([^"]*?)\s*"')
_SPACES = re.compile(r"\s+")


def detokenize(text: str) -> str:
    """`it 's a film , honestly .` -> `it's a film, honestly.`"""
    text = _SPACES.sub(" ", text).strip()
    text = text.replace("-- ", "- ").replace(" --", " -")
    text = _CLITIC.sub(r"\1\2", text)
    text = _SPACED_PUNCT.sub(r"\1", text)
    text = _OPENING.sub(r"\1", text)
    text = _QUOTED.sub(r'"\1"', text)
    return text


def _lines(path: Path) -> Iterator[str]:
    # The movie corpora have Latin-1 leftovers; a replacement character costs nothing here.
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                yield line


_PROS_CONS = re.compile(r"<(Pros|Cons)>(.*?)</\1>", re.IGNORECASE | re.DOTALL)


def _pros_cons(path: Path, label: int) -> Iterator[Example]:
    for line in _lines(path):
        for match in _PROS_CONS.finditer(line):
            text = _SPACES.sub(" ", match.group(2)).strip()
            if text:
                yield Example(text, label, "pros_cons")


def _tsv(path: Path, source: str) -> Iterator[Example]:
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            yield Example(row["text"].strip(), LABELS.index(row["label"]), source)


def corpus_examples(root: Path | None = None) -> list[Example]:
    """Every labelled training sentence, before de-duplication and splitting."""
    root = root or data_dir()
    neg, neu, pos = range(3)
    out: list[Example] = []
    for name, label in (("rt-polarity.pos", pos), ("rt-polarity.neg", neg)):
        out += [Example(detokenize(t), label, "sentence_polarity") for t in _lines(root / "sentence_polarity" / name)]
    out += _pros_cons(root / "pros_cons" / "IntegratedPros.txt", pos)
    out += _pros_cons(root / "pros_cons" / "IntegratedCons.txt", neg)
    # Objective plot sentences are the neutral class; the subjective quotes have no polarity label.
    out += [Example(detokenize(t), neu, "subjectivity") for t in _lines(root / "subjectivity" / "plot.tok.gt9.5000")]
    out += _tsv(root / "marport" / "extra_train.tsv", "marport")
    return out


def _key(text: str) -> str:
    return _SPACES.sub(" ", text.lower()).strip(" .!?")


def _bucket(key: str) -> float:
    """A stable number in [0, 1) per sentence."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def splits(examples: list[Example]) -> dict[str, list[Example]]:
    """{"train", "validation", "test"}: duplicates merged, sentences with conflicting labels dropped."""
    by_key: dict[str, list[Example]] = {}
    for ex in examples:
        by_key.setdefault(_key(ex.text), []).append(ex)
    out: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for key, group in by_key.items():
        if len({ex.label for ex in group}) > 1 or not key:
            continue  # "Price" is both a pro and a con: no label to learn
        ex = group[0]
        if ex.source == "marport":
            out["train"].append(ex)  # the project's own sentences are few and meant for training
            continue
        b = _bucket(key)
        name = "test" if b < TEST_FRACTION else "validation" if b < TEST_FRACTION + VALIDATION_FRACTION else "train"
        out[name].append(ex)
    return out


def everyday_eval(root: Path | None = None) -> list[Example]:
    """Review sentences written for evaluation only (phones, restaurants, films): never trained on."""
    return list(_tsv((root or data_dir()) / "marport" / "everyday_eval.tsv", "everyday_eval"))


def load_splits() -> dict[str, list[Example]]:
    return splits(corpus_examples())
