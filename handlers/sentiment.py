"""RoBERTa sentiment: the model core, free of any serving runtime.

`parse_request` turns one request into texts (or raises RequestError), then
`preprocess` -> `forward` -> `postprocess` run a whole batch of parsed requests
at once. The TorchServe and SageMaker adapters, the tests and the benchmarks all
call these same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serving_common import JSON_TYPE, Request, RequestError, as_json, as_text, checkpoint_dir

DEFAULT_MAX_CHARS = 5000
DEFAULT_MAX_ITEMS = 64
TEXT_TYPES = ("text/plain", "")  # an absent Content-Type is read as text


@dataclass
class SentimentModel:
    tokenizer: Any
    model: torch.nn.Module
    labels: list[str]
    max_length: int
    max_chars: int = DEFAULT_MAX_CHARS
    max_items: int = DEFAULT_MAX_ITEMS


@dataclass
class TextRequest:
    texts: list[str]
    single: bool  # answer with one object rather than a list


def load(model_dir: str, settings: Mapping[str, Any] | None = None) -> SentimentModel:
    """Load any Hugging Face sequence-classification checkpoint saved with save_pretrained."""
    settings = settings or {}
    path = checkpoint_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    if settings.get("quantize"):
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    id2label = model.config.id2label
    labels = [str(id2label[i]).lower() for i in range(len(id2label))]
    # Positions past the model's embedding table would index out of range.
    limit = min(
        int(tokenizer.model_max_length or 512),
        int(getattr(model.config, "max_position_embeddings", 514)) - 2,
    )
    return SentimentModel(
        tokenizer=tokenizer,
        model=model,
        labels=labels,
        max_length=limit,
        max_chars=int(settings.get("max_chars", DEFAULT_MAX_CHARS)),
        max_items=int(settings.get("max_items", DEFAULT_MAX_ITEMS)),
    )


def _check_text(text: Any, where: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise RequestError(
            f"{where} must be a string, got {type(text).__name__}", kind="invalid_type"
        )
    if not text.strip():
        raise RequestError(f"{where} is empty; send non-blank text", kind="empty_text")
    if len(text) > max_chars:
        raise RequestError(
            f"{where} has {len(text)} characters; at most {max_chars} are accepted",
            kind="text_too_long",
            code=413,
        )
    return text


def parse_request(request: Request, model: SentimentModel) -> TextRequest:
    """Accept text/plain, {"text": "..."} or {"inputs": ["...", ...]}."""
    body = request.body
    if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
        raise RequestError(
            'request body is empty; send text/plain, {"text": "..."} or {"inputs": [...]}',
            kind="empty_body",
        )
    is_json = request.media_type == JSON_TYPE or isinstance(body, (dict, list))
    if not is_json:
        if request.media_type not in TEXT_TYPES:
            raise RequestError(
                f"unsupported content type {request.media_type!r}; "
                "use text/plain or application/json",
                kind="unsupported_media_type",
                code=415,
            )
        return TextRequest([_check_text(as_text(body), "text", model.max_chars)], single=True)

    doc = as_json(body)
    if isinstance(doc, dict) and "text" in doc:
        return TextRequest([_check_text(doc["text"], '"text"', model.max_chars)], single=True)
    if isinstance(doc, dict) and "inputs" in doc:
        items = doc["inputs"]
        if isinstance(items, str):  # SageMaker/HF style single input
            return TextRequest([_check_text(items, '"inputs"', model.max_chars)], single=True)
        if not isinstance(items, list):
            raise RequestError(
                f'"inputs" must be a list of strings, got {type(items).__name__}',
                kind="invalid_type",
            )
        if not items:
            raise RequestError('"inputs" is an empty list', kind="empty_text")
        if len(items) > model.max_items:
            raise RequestError(
                f'"inputs" has {len(items)} texts; at most {model.max_items} per request',
                kind="too_many_inputs",
                code=413,
            )
        texts = [_check_text(t, f'"inputs"[{i}]', model.max_chars) for i, t in enumerate(items)]
        return TextRequest(texts, single=False)
    raise RequestError(
        'JSON body must be an object with "text" (a string) or "inputs" (a list of strings)',
        kind="invalid_json_shape",
    )


def preprocess(model: SentimentModel, requests: Sequence[TextRequest]) -> dict:
    """Tokenise every text of every request in one call, padded to the longest."""
    texts = [t for r in requests for t in r.texts]
    return model.tokenizer(
        texts,
        padding="longest",
        truncation=True,
        max_length=model.max_length,
        return_tensors="pt",
    )


def forward(model: SentimentModel, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Class probabilities, one row per text."""
    with torch.inference_mode():
        logits = model.model(**batch).logits
    return torch.softmax(logits.float(), dim=-1)


def postprocess(
    model: SentimentModel, probs: torch.Tensor, requests: Sequence[TextRequest]
) -> list:
    """Split the batch back into one answer per request, in order."""
    rows = probs.tolist()
    answers, start = [], 0
    for req in requests:
        results = []
        for row in rows[start : start + len(req.texts)]:
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                {
                    "label": model.labels[best],
                    "score": row[best],
                    "scores": dict(zip(model.labels, row)),
                }
            )
        start += len(req.texts)
        answers.append(results[0] if req.single else results)
    return answers


def predict(model: SentimentModel, requests: Sequence[TextRequest]) -> list:
    """The whole pipeline for already-parsed requests."""
    if not requests:
        return []
    return postprocess(model, forward(model, preprocess(model, requests)), requests)


def predict_texts(model: SentimentModel, texts: Sequence[str]) -> list[dict]:
    """Convenience for notebooks and benchmarks: plain strings in, answers out."""
    return predict(model, [TextRequest([t], single=True) for t in texts])
