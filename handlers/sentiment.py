"""RoBERTa sentiment: the model core, free of any serving runtime.

`parse_request` turns one request into tokenised texts (or raises RequestError,
so every cap, the token cap included, is checked before any model work); then
`preprocess` sorts a handler call's texts into length-sorted micro-batches under
a padded-token budget, `forward` runs one micro-batch and `postprocess` splits
the rows back into one answer per request. The TorchServe and SageMaker
adapters, the tests and the benchmarks all call these same functions.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .placement import Placement, device_settings, place
from .review import ReviewBand, mark
from .serving_common import (
    JSON_TYPE,
    Request,
    RequestError,
    as_json,
    as_text,
    check_body_size,
    checkpoint_dir,
    explanation_refused,
    read_settings,
    refuse_form,
    setting_flag,
    shipped_settings,
)
from .word_cache import WordCache

log = logging.getLogger(__name__)

# The shipped model-config.yaml's handler section (config/sentiment.yaml): every default below comes from it,
# `auto` values as on a CPU; an archive's own settings are laid over it at load.
SHIPPED: Mapping[str, Any] = shipped_settings("sentiment")
CPU_DEFAULTS = device_settings(SHIPPED, torch.device("cpu"))
TEXT_TYPES = ("text/plain", "")  # an absent Content-Type is read as text
# Categories of characters a reader cannot see: spaces, controls, format marks (zero-width, BOM, bidi).
INVISIBLE = ("Zs", "Zl", "Zp", "Cc", "Cf")
ASCII_INVISIBLE = "".join(c for c in map(chr, range(128)) if unicodedata.category(c) in INVISIBLE)


@dataclass
class TextLimits:
    """What one request may ask of the model, and how much one forward pass may hold.

    Shipped values (model-config.yaml) come from measurements: see the docs/caps.md's table.
    """

    max_body_bytes: int = int(CPU_DEFAULTS["max_body_bytes"])  # refused before decoding
    max_chars: int = int(CPU_DEFAULTS["max_chars"])  # per text: bounds tokenisation work before it starts
    max_items: int = int(CPU_DEFAULTS["max_items"])  # texts per {"inputs": [...]} request
    max_tokens: int = int(CPU_DEFAULTS["max_tokens"])  # per request, after tokenisation (and truncation)
    # Per device (handler.devices; the defaults are the CPU's): padded tokens per forward pass, texts in
    # length-sorted micro-batches, and the share of real tokens below which a micro-batch closes rather
    # than grow (docs/devices.md, "No padding waste").
    batch_tokens: int = int(CPU_DEFAULTS["batch_tokens"])
    min_padding_efficiency: float = float(CPU_DEFAULTS["min_padding_efficiency"])
    # Explanations cost explain_steps forward and backward passes per text: their own, smaller token cap.
    explain_max_tokens: int = int(CPU_DEFAULTS["explain_max_tokens"])  # per explained request
    explain_steps: int = int(CPU_DEFAULTS["explain_steps"])  # integrated-gradients interpolation steps

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "TextLimits":
        """From handler settings already resolved for the device (placement.device_settings)."""
        kinds = {k: type(getattr(cls, k)) for k in cls.__dataclass_fields__}
        given = {k: settings[k] for k in kinds if k in settings}
        unresolved = [k for k, v in given.items() if str(v).strip().lower() == "auto"]
        if unresolved:
            raise ValueError(f"handler.{unresolved[0]} is auto, but handler.devices gives no value for this device")
        return cls(**{k: kinds[k](v) for k, v in given.items()})


@dataclass
class SentimentModel:
    tokenizer: Any
    model: Any  # a torch sequence classifier, or int8.OnnxClassifier: both answer model(**inputs).logits
    labels: list[str]
    max_length: int  # tokens per text, special tokens included; longer texts are truncated
    limits: TextLimits = field(default_factory=TextLimits)
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    review: ReviewBand | None = None  # handler.review_band: answers too close to call are marked for a person
    source: str = ""  # the checkpoint folder (an int8 model explains through a torch copy loaded from it)
    encoder: Any = None  # the fast tokenizer's backend, set to truncate (batch_encoder); None: a slow tokenizer
    words: WordCache | None = None  # texts encoded from a cache of chunks and words (word_cache.py)
    _explainer: Any = None

    def explainer(self) -> torch.nn.Module:
        """A torch module to take gradients through: the served one, or (int8 is an ONNX graph) an
        fp32 copy loaded on the first explanation."""
        if self._explainer is None:
            net = getattr(self.model, "_orig_mod", self.model)  # torch.compile's wrapper holds the module
            if not isinstance(net, torch.nn.Module):
                net = AutoModelForSequenceClassification.from_pretrained(self.source).eval()
            self._explainer = net
        return self._explainer


@dataclass(slots=True)
class TextRequest:
    texts: list[str]
    single: bool  # answer with one object rather than a list
    ids: list[list[int]] = field(default_factory=list)  # token ids per text, truncated to max_length
    truncated: list[bool] = field(default_factory=list)
    explain: bool = False  # answer with word attributions too
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)  # character spans per token, when explaining

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


@dataclass
class MicroBatch:
    """Texts of similar length, padded together for one forward pass."""

    rows: list[int]  # positions in the flat list of texts of the handler call
    inputs: dict  # input_ids and attention_mask tensors
    real_tokens: int
    padded_tokens: int


def position_limit(config: Any) -> int:
    """Tokens the position table can hold: a longer input would index past it.

    RoBERTa-family models number positions from pad_token_id + 1 (2 for roberta-base,
    whose 514-row table holds 512 tokens); BERT-style models from 0.
    """
    table = int(getattr(config, "max_position_embeddings", 512))
    if "roberta" in str(getattr(config, "model_type", "")) or "camembert" in str(getattr(config, "model_type", "")):
        return table - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return table


def load(model_dir: str, settings: Mapping[str, Any] | None = None, placement: Placement | None = None) -> SentimentModel:
    """Load any Hugging Face sequence-classification checkpoint saved with save_pretrained.

    `placement` (device and precision) comes from the runtime adapter; without one, the
    CPU and `handler.precision` (default auto). `handler.compile: true` wraps the torch
    model in torch.compile and warms it up here, so the first request is not the slow one.
    """
    settings = {**SHIPPED, **(read_settings(model_dir, None) if settings is None else settings)}
    placement = placement or place(None, settings)
    settings = device_settings(settings, placement.device)  # `auto` values for this device
    path = checkpoint_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any  # a transformers classifier, torch.compile's wrapper of one, or int8.OnnxClassifier
    if placement.precision == "int8":
        from transformers import AutoConfig

        from .int8 import load_int8

        model = load_int8(path, AutoConfig.from_pretrained(path), torch.get_num_threads())
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path)
        model.to(device=placement.device, dtype=placement.dtype).eval()
        if setting_flag(settings, "compile"):
            model = torch.compile(model, dynamic=True)
    config = model.config
    labels = [str(config.id2label[i]).lower() for i in range(len(config.id2label))]
    limit = min(int(tokenizer.model_max_length or 512), position_limit(config))
    limits = TextLimits.from_settings(settings)
    if limits.batch_tokens < limit:
        raise ValueError(f"batch_tokens ({limits.batch_tokens}) must hold one text of {limit} tokens")
    encoder = batch_encoder(tokenizer, limit)
    cached = encoder is not None and setting_flag(settings, "word_cache", True)
    words = WordCache.for_tokenizer(encoder, limit) if cached else None
    log.info("word cache %s", f"on ({words.shape} tokenizer)" if words else "off: every text goes to the tokenizer")
    loaded = SentimentModel(tokenizer=tokenizer, model=model, labels=labels, max_length=limit, limits=limits,
                            device=placement.device, precision=placement.precision,
                            review=ReviewBand.from_settings(settings), source=path, encoder=encoder, words=words)
    warm_up(loaded)
    return loaded


WARM_UP_LENGTHS = (8, 32, 128, 512)  # tokens: compiled graphs and oneDNN kernels are made per shape family


def warm_up(model: SentimentModel) -> None:
    """Run a few lengths once at load: kernel selection, compilation and allocation happen here."""
    for length in WARM_UP_LENGTHS:
        if length > model.max_length:
            break
        ids = [model.tokenizer.unk_token_id or 0] * length  # content does not matter, only shapes
        preprocessed = preprocess(model, [TextRequest(["warm-up"], single=True, ids=[ids], truncated=[False])])
        for batch in preprocessed:
            forward(model, batch)


def _check_text(text: Any, where: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{where} must be a string, got {type(text).__name__}", kind="invalid_type")
    if len(text) > max_chars:
        raise RequestError(
            f"{where} has {len(text)} characters; at most {max_chars} are accepted (max_chars)",
            kind="text_too_long",
            code=413,
        )
    if text.isascii():  # most texts: no surrogates possible, and str.strip finds a visible character
        blank = not text.strip(ASCII_INVISIBLE)
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(
                f"{where} has an unpaired surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}; "
                "send valid Unicode text",
                kind="invalid_text",
            ) from None
        blank = all(unicodedata.category(ch) in INVISIBLE for ch in text)
    if blank:
        raise RequestError(f"{where} has no visible characters; send non-blank text", kind="empty_text")
    return text


def _explain_field(doc: dict) -> bool:
    value = doc.get("explain", False)
    if not isinstance(value, bool):
        raise RequestError(f'"explain" must be true or false, got {json_type(value)}', kind="invalid_type")
    return value


def json_type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _texts(request: Request, model: SentimentModel) -> tuple[list[str], bool, bool]:
    """The request's texts, whether it asked for one answer (not a list), and whether its JSON
    asked for an explanation ({"explain": true})."""
    body, limits = request.body, model.limits
    refuse_form(request, "text/plain")
    if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
        raise RequestError(
            'request body is empty; send text/plain, {"text": "..."} or {"inputs": [...]}',
            kind="empty_body",
        )
    check_body_size(body, limits.max_body_bytes)
    is_json = request.media_type == JSON_TYPE or isinstance(body, (dict, list))
    if not is_json:
        if request.media_type not in TEXT_TYPES:
            raise RequestError(
                f"unsupported content type {request.media_type!r}; use text/plain or application/json",
                kind="unsupported_media_type",
                code=415,
            )
        return [_check_text(as_text(body, request.content_type), "text", limits.max_chars)], True, False

    doc = as_json(body, request.content_type)
    if isinstance(doc, dict) and "text" in doc:
        return [_check_text(doc["text"], '"text"', limits.max_chars)], True, _explain_field(doc)
    if isinstance(doc, dict) and "inputs" in doc:
        items = doc["inputs"]
        if isinstance(items, str):  # SageMaker/HF style single input
            return [_check_text(items, '"inputs"', limits.max_chars)], True, _explain_field(doc)
        if not isinstance(items, list):
            raise RequestError(f'"inputs" must be a list of strings, got {type(items).__name__}', kind="invalid_type")
        if not items:
            raise RequestError('"inputs" is an empty list', kind="empty_text")
        if len(items) > limits.max_items:
            raise RequestError(
                f'"inputs" has {len(items)} texts; at most {limits.max_items} per request (max_items)',
                kind="too_many_inputs",
                code=413,
            )
        texts = [_check_text(t, f'"inputs"[{i}]', limits.max_chars) for i, t in enumerate(items)]
        return texts, False, _explain_field(doc)
    raise RequestError(
        'JSON body must be an object with "text" (a string) or "inputs" (a list of strings)',
        kind="invalid_json_shape",
    )


def tokenize(model: SentimentModel, texts: Sequence[str], offsets: bool = False):
    """Token ids per text, truncated to the model's length, which texts were truncated and,
    with `offsets`, each token's character span (empty for special tokens).

    With a fast tokenizer, texts come from the word cache (word_cache.py, same ids) and those it declines
    from one call of its Rust backend (`backend_tokenizer`, set up at load to truncate as
    `tokenizer(..., truncation=True, max_length=...)` does); a slow tokenizer is called as usual.
    """
    texts = list(texts)
    try:
        if model.words is not None and not offsets:
            return _cached_tokens(model, texts) + ([],)
        if model.encoder is not None:
            # encode_batch_fast skips the character spans, wanted only for explanations (about 20% less work).
            fast = getattr(model.encoder, "encode_batch_fast", None)
            encodings = (model.encoder.encode_batch if offsets or fast is None else fast)(texts)
            ids = [e.ids for e in encodings]
            truncated = [bool(e.overflowing) for e in encodings]
            spans = [list(e.offsets) for e in encodings] if offsets else []
            return ids, truncated, spans
        offsets = offsets and model.tokenizer.is_fast  # a slow tokenizer has no spans: words become tokens
        enc = model.tokenizer(texts, truncation=True, max_length=model.max_length, return_offsets_mapping=offsets)
    except Exception as exc:  # the Rust tokenizer raises TypeError/ValueError/its own types
        raise RequestError(f"text could not be tokenised: {exc}", kind="untokenizable_text") from None
    truncated = [bool(e.overflowing) for e in enc.encodings] if enc.encodings else [False] * len(texts)
    spans = [[tuple(span) for span in row] for row in enc["offset_mapping"]] if offsets else []
    return list(enc["input_ids"]), truncated, spans


def _cached_tokens(model: SentimentModel, texts: list[str]) -> tuple[list, list]:
    """Ids and truncation flags: from the word cache where it takes the text, else one backend call."""
    assert model.words is not None
    encode = model.words.encode
    found: list = [encode(text) for text in texts]
    rest = [i for i, f in enumerate(found) if f is None]  # texts the cache does not take
    if rest:
        for i, e in zip(rest, model.encoder.encode_batch_fast([texts[i] for i in rest])):
            found[i] = e.ids, bool(e.overflowing)
    return [f[0] for f in found], [f[1] for f in found]


def batch_encoder(tokenizer: Any, max_length: int) -> Any:
    """The fast tokenizer's Rust backend, truncating at `max_length` and padding nothing (preprocess
    pads each micro-batch), or None for a slow tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    import copy

    encoder = copy.deepcopy(tokenizer.backend_tokenizer)  # the tokenizer's own stays as the library set it
    encoder.no_padding()
    encoder.enable_truncation(max_length)
    return encoder


def text_request(model: SentimentModel, texts: Sequence[str], single: bool, explain: bool = False) -> TextRequest:
    """Texts already checked, tokenised for the model."""
    ids, truncated, offsets = tokenize(model, texts, offsets=explain)
    return TextRequest(list(texts), single=single, ids=ids, truncated=truncated, explain=explain, offsets=offsets)


def read_request(request: Request, model: SentimentModel) -> TextRequest:
    """Accept text/plain, {"text": "..."} or {"inputs": ["...", ...]} (with "explain": true for word
    attributions, as TorchServe's /explanations route asks too): every check that needs no tokens.
    parse_batch tokenises a handler call's texts together and checks the token caps."""
    texts, single, explain = _texts(request, model)
    explain = explain or request.explain
    if explain and not request.allow_explain:
        raise explanation_refused()
    return TextRequest(texts, single, [], [], explain)


def check_tokens(model: SentimentModel, parsed: TextRequest) -> TextRequest:
    """The token caps of one tokenised request."""
    tokens = parsed.tokens
    if parsed.explain and tokens > model.limits.explain_max_tokens:
        raise RequestError(
            f"an explanation was asked for {tokens} tokens; at most {model.limits.explain_max_tokens} per "
            "request are explained (explain_max_tokens); explain fewer or shorter texts",
            kind="too_many_tokens_to_explain",
            code=413,
        )
    if tokens > model.limits.max_tokens:
        raise RequestError(
            f"request has {tokens} tokens; at most {model.limits.max_tokens} per request (max_tokens); "
            "split it into smaller requests",
            kind="too_many_tokens",
            code=413,
        )
    return parsed


def parse_batch(model: SentimentModel, items: Sequence[TextRequest]) -> list[TextRequest | RequestError]:
    """Tokenise the texts of a handler call's requests in one tokenizer call, then hold each request to
    the token caps: one entry per request, the request or the error that refuses it. Should the
    tokenizer refuse the call, each request is tokenised alone, so a text it cannot take costs only
    its own request."""
    texts = [t for item in items for t in item.texts]
    try:
        ids, truncated, offsets = tokenize(model, texts, offsets=any(item.explain for item in items))
    except RequestError as err:
        if len(items) == 1:
            return [err]
        return [parse_batch(model, [item])[0] for item in items]
    out: list[TextRequest | RequestError] = []
    start = 0
    for item in items:
        end = start + len(item.texts)
        item.ids, item.truncated = ids[start:end], truncated[start:end]
        item.offsets = offsets[start:end] if item.explain else []
        start = end
        try:
            out.append(check_tokens(model, item))
        except RequestError as err:
            out.append(err)
    return out


def parse_request(request: Request, model: SentimentModel) -> TextRequest:
    """One request, read, tokenised and held to every cap (raises RequestError)."""
    parsed = parse_batch(model, [read_request(request, model)])[0]
    if isinstance(parsed, RequestError):
        raise parsed
    return parsed


def micro_batches(lengths: Sequence[int], budget: int, min_efficiency: float = 0.0) -> list[list[int]]:
    """Group texts, shortest first, so that each group's padded size (count x longest) fits the
    budget and at least `min_efficiency` of it is real tokens.

    Sorting means a text is padded only to its longest neighbour; the efficiency floor
    starts a new group when a much longer text would pad the group's short ones. Every
    text fits alone because load() checks budget >= max_length.
    """
    return [list(rows) for rows in _grouped(tuple(lengths), budget, min_efficiency)]


# A handler call groups its texts twice, for preprocess and then for the operator figures: the second is a lookup.
@functools.lru_cache(maxsize=4)
def _grouped(lengths: tuple[int, ...], budget: int, min_efficiency: float) -> tuple[tuple[int, ...], ...]:
    groups: list[list[int]] = []
    real = 0
    for row in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Sorted ascending, so this text is the longest of its group so far.
        size = lengths[row]
        if groups and (len(groups[-1]) + 1) * size <= budget and (real + size) >= min_efficiency * (len(groups[-1]) + 1) * size:
            groups[-1].append(row)
            real += size
        else:
            groups.append([row])
            real = size
    return tuple(map(tuple, groups))


def preprocess(model: SentimentModel, requests: Sequence[TextRequest]) -> list[MicroBatch]:
    """Every text of every request, in length-sorted micro-batches under the token budget, padded
    on the right with the tokenizer's pad token.

    The groups are consecutive runs of the texts sorted by length, so one padded matrix of them all
    is built (numpy places every id in one step); each micro-batch is its rows, cut to its own
    longest text.
    """
    ids = [i for r in requests for i in r.ids]
    groups = micro_batches([len(i) for i in ids], model.limits.batch_tokens, model.limits.min_padding_efficiency)
    padded, attention, sizes = padded_matrix(ids, groups, model.tokenizer.pad_token_id or 0)
    batches, start = [], 0
    for rows in groups:
        end = start + len(rows)
        width = sizes[end - 1]  # sorted: the group's last text is its longest
        inputs = {"input_ids": _on(model, padded[start:end, :width]), "attention_mask": _on(model, attention[start:end, :width])}
        batches.append(MicroBatch(rows, inputs, sum(sizes[start:end]), len(rows) * width))
        start = end
    return batches


def padded_matrix(ids: Sequence[Sequence[int]], groups: Sequence[Sequence[int]],
                  pad_id: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The texts of `groups` (micro_batches' groups: runs of the texts sorted by length), in that order, as one
    matrix padded on the right with `pad_id`, its attention mask, and each row's length."""
    order = [r for rows in groups for r in rows]
    sizes = [len(ids[r]) for r in order]
    mask = np.arange(sizes[-1]) < np.array(sizes)[:, None]  # row-major, so the True cells take the ids in order
    padded = np.full(mask.shape, pad_id, dtype=np.int64)
    padded[mask] = np.fromiter(chain.from_iterable(ids[r] for r in order), dtype=np.int64, count=sum(sizes))
    return padded, mask.astype(np.int64), sizes


def _on(model: SentimentModel, array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(model.device, non_blocking=True)


def forward(model: SentimentModel, batch: MicroBatch) -> torch.Tensor:
    """Logits in fp32 whatever the precision, one row per text of the micro-batch, left on the model's device."""
    with torch.inference_mode():
        return model.model(**batch.inputs).logits.float()


def padding_efficiency(batches: Sequence[MicroBatch]) -> float:
    """Real tokens over computed (padded) tokens: 1.0 means no padding was computed."""
    padded = sum(b.padded_tokens for b in batches)
    return sum(b.real_tokens for b in batches) / padded if padded else 1.0


def postprocess(model: SentimentModel, probs: torch.Tensor, requests: Sequence[TextRequest]) -> list:
    """Split the flat rows (a CPU tensor, in request order) back into one answer per request, in order."""
    rows, best = probs.tolist(), probs.argmax(dim=1).tolist()
    labels, band = model.labels, model.review
    answers, start = [], 0
    for req in requests:
        results = []
        for i, truncated in enumerate(req.truncated or [False] * len(req.texts), start):
            row, top = rows[i], best[i]
            result = {"label": labels[top], "score": row[top], "scores": dict(zip(labels, row))}
            if truncated:
                result["truncated"] = True  # only the first max_length tokens were read
            if band is not None:
                mark(result, row[top], band)
            results.append(result)
        start += len(req.texts)
        answers.append(results[0] if req.single else results)
    return answers


def predict(model: SentimentModel, requests: Sequence[TextRequest]) -> list:
    """The whole pipeline for already-parsed requests: the micro-batches' logits stay on the device
    until the last one is done, then one softmax and one transfer bring every text's probabilities back."""
    if not requests:
        return []
    batches = preprocess(model, requests)
    with torch.inference_mode():  # one softmax for the call, then one transfer
        found = torch.softmax(torch.cat([forward(model, batch) for batch in batches]), dim=-1).cpu()
    probs = torch.empty_like(found)
    probs[torch.tensor([r for b in batches for r in b.rows])] = found  # back into request order
    log.info(
        "%d texts, %d tokens, %d padded tokens in %d micro-batches, padding efficiency %.2f",
        len(probs), sum(b.real_tokens for b in batches), sum(b.padded_tokens for b in batches), len(batches),
        padding_efficiency(batches),
    )
    answers = postprocess(model, probs, requests)
    for request, answer in zip(requests, answers):
        if request.explain:
            explain(model, request, [answer] if request.single else answer)
    return answers


def explain(model: SentimentModel, request: TextRequest, answers: Sequence[dict]) -> None:
    """Add word attributions toward each text's predicted label to its answer."""
    from .text_attributions import integrated_gradients, reference_token, words

    net, limits = model.explainer(), model.limits
    special = set(model.tokenizer.all_special_ids)
    reference = reference_token(model.tokenizer)
    for i, (text, ids, answer) in enumerate(zip(request.texts, request.ids, answers)):
        target = model.labels.index(answer["label"])
        found = integrated_gradients(net, ids, target, special, reference, limits.explain_steps, limits.batch_tokens)
        if request.offsets:
            answer["attributions"] = words(text, request.offsets[i], found.scores, request.truncated[i])
        else:  # no character spans from a slow tokenizer: the tokens themselves
            tokens = model.tokenizer.convert_ids_to_tokens(ids)
            answer["attributions"] = [{"text": t, "score": s} for t, s, token in zip(tokens, found.scores, ids)
                                      if token not in special]
        answer["explanation"] = {"method": "integrated_gradients", "target": answer["label"],
                                 "steps": limits.explain_steps, "convergence_delta": found.convergence_delta}


def body_limit(model: SentimentModel) -> int:
    return model.limits.max_body_bytes


def figures(model: SentimentModel, requests: Sequence[TextRequest], answers: Sequence[Any]) -> dict:
    """One handler call's figures for the operator metrics (micro-batching is deterministic, so
    the padding efficiency comes from the token counts: the groups predict made, from _grouped's cache)."""
    lengths = [len(ids) for r in requests for ids in r.ids]
    groups = _grouped(tuple(lengths), model.limits.batch_tokens, model.limits.min_padding_efficiency)
    padded = sum(len(g) * lengths[g[-1]] for g in groups)  # sorted: a group's last text is its longest
    flat = [a for answer in answers for a in (answer if isinstance(answer, list) else [answer])] if model.review else []
    return {
        "Texts": len(lengths),
        "Tokens": sum(lengths),
        "PaddingEfficiency": 100.0 * sum(lengths) / padded if padded else None,
        "ExplanationsServed": sum(len(r.texts) for r in requests if r.explain),
        "ReviewFlagged": sum(bool(a.get("review")) for a in flat),
    }


def predict_texts(model: SentimentModel, texts: Sequence[str]) -> list[dict]:
    """Convenience for notebooks and benchmarks: plain strings in, answers out."""
    return predict(model, [text_request(model, [t], single=True) for t in texts])
