"""RoBERTa-style sentiment: any Hugging Face sequence classifier saved with save_pretrained, as a served Model.

`read` checks a request's texts (text_input.py); `prepare` tokenises a call's texts in one call of the tokenizers
library and holds each request to the token caps; `preprocess` packs the texts into length-sorted micro-batches
under a padded-token budget; `forward` runs them and returns every text's probabilities; `postprocess` splits them
into one answer per request (with word attributions when asked).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .contract import Model, Request, RequestError
from .review import ReviewBand, mark
from .s3_input import explanation_refused
from .settings import checkpoint_dir, setting_flag, shipped_settings
from .text_input import TextCaps, read_texts

log = logging.getLogger(__name__)

WARM_UP_LENGTHS = (8, 32, 128, 512)  # tokens: compiled graphs and oneDNN kernels are made per shape family


@dataclass(slots=True)
class TextRequest:
    texts: list[str]
    single: bool  # answer with one object rather than a list
    explain: bool = False  # answer with word attributions too
    ids: list[list[int]] = field(default_factory=list)  # token ids per text, truncated to max_length
    truncated: list[bool] = field(default_factory=list)
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)  # character spans per token, explaining

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


@dataclass
class MicroBatch:
    """Texts of similar length, padded together for one forward pass."""

    rows: list[int]  # positions in the flat list of the call's texts
    inputs: dict  # input_ids and attention_mask tensors
    real_tokens: int
    padded_tokens: int


def position_limit(config: Any) -> int:
    """Tokens the position table holds: RoBERTa-family models number positions from pad_token_id + 1."""
    table = int(getattr(config, "max_position_embeddings", 512))
    if any(name in str(getattr(config, "model_type", "")) for name in ("roberta", "camembert")):
        return table - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return table


def micro_batches(lengths: Sequence[int], budget: int, min_efficiency: float = 0.0) -> list[list[int]]:
    """Texts grouped shortest first so that each group's padded size (count x longest) fits the budget and at
    least `min_efficiency` of it is real tokens (docs/devices.md, "No padding waste")."""
    groups: list[list[int]] = []
    real = 0
    for row in sorted(range(len(lengths)), key=lengths.__getitem__):
        size = lengths[row]  # sorted ascending: the longest of its group so far
        grown = (len(groups[-1]) + 1) * size if groups else 0
        if groups and grown <= budget and real + size >= min_efficiency * grown:
            groups[-1].append(row)
            real += size
        else:
            groups.append([row])
            real = size
    return groups


def padded_matrix(ids: Sequence[Sequence[int]], groups: Sequence[Sequence[int]],
                  pad_id: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The texts of `groups`, in that order, as one matrix padded on the right, its attention mask, and each
    row's length."""
    order = [r for rows in groups for r in rows]
    sizes = [len(ids[r]) for r in order]
    mask = np.arange(sizes[-1]) < np.array(sizes)[:, None]  # row-major: the True cells take the ids in order
    padded = np.full(mask.shape, pad_id, dtype=np.int64)
    padded[mask] = np.fromiter(chain.from_iterable(ids[r] for r in order), dtype=np.int64, count=sum(sizes))
    return padded, mask.astype(np.int64), sizes


class Sentiment(Model):
    defaults = shipped_settings("sentiment")

    def load(self, model_dir: str) -> None:
        path = self.source = checkpoint_dir(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.precision == "int8":
            from transformers import AutoConfig

            from .int8 import load_int8

            self.net: Any = load_int8(path, AutoConfig.from_pretrained(path), torch.get_num_threads())
        else:
            self.net = AutoModelForSequenceClassification.from_pretrained(path)
            self.net.to(device=self.device, dtype=self.dtype).eval()
            if setting_flag(self.settings, "compile"):
                self.net = torch.compile(self.net, dynamic=True)
        config = self.net.config
        self.labels = [str(config.id2label[i]).lower() for i in range(len(config.id2label))]
        self.max_length = min(int(self.tokenizer.model_max_length or 512), position_limit(config))
        get = self.settings.__getitem__
        self.caps = TextCaps(int(get("max_body_bytes")), int(get("max_chars")), int(get("max_items")))
        self.max_tokens, self.batch_tokens = int(get("max_tokens")), int(get("batch_tokens"))
        self.min_efficiency = float(get("min_padding_efficiency"))
        self.explain_max_tokens, self.explain_steps = int(get("explain_max_tokens")), int(get("explain_steps"))
        if self.batch_tokens < self.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one text of {self.max_length} tokens")
        self.review = ReviewBand.from_settings(self.settings)
        self.encoder = self._batch_encoder()
        self._explainer: torch.nn.Module | None = None
        self.warm_up()

    def _batch_encoder(self) -> Any:
        """The fast tokenizer's backend, truncating at max_length and padding nothing (preprocess pads)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        encoder = copy.deepcopy(self.tokenizer.backend_tokenizer)  # the tokenizer's own stays as set
        encoder.no_padding()
        encoder.enable_truncation(self.max_length)
        return encoder

    def warm_up(self) -> None:
        """Kernel selection, compilation and allocation happen at load, not on the first requests."""
        for length in (n for n in WARM_UP_LENGTHS if n <= self.max_length):
            ids = [self.tokenizer.unk_token_id or 0] * length
            self.predict([TextRequest(["warm-up"], True, ids=[ids], truncated=[False])])

    def read(self, request: Request) -> TextRequest:
        found = read_texts(request, self.caps)
        explain = found.explain or request.explain
        if explain and not request.allow_explain:
            raise explanation_refused()
        return TextRequest(found.texts, found.single, explain)

    def tokenize(self, texts: list[str], offsets: bool = False) -> tuple[list, list, list]:
        """Ids per text (truncated to max_length), which texts were truncated and, with `offsets`, each token's
        character span: one call of the tokenizers library for all texts."""
        try:
            if self.encoder is not None:
                encode = self.encoder.encode_batch if offsets else self.encoder.encode_batch_fast
                found = encode(texts)
                spans = [list(e.offsets) for e in found] if offsets else []
                return [e.ids for e in found], [bool(e.overflowing) for e in found], spans
            offsets = False  # a slow tokenizer has no spans: its tokens are shown instead
            enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        except Exception as exc:  # the tokenizer raises TypeError/ValueError/its own types
            raise RequestError(f"text could not be tokenised: {exc}", kind="untokenizable_text") from None
        return list(enc["input_ids"]), [False] * len(texts), []

    def check_tokens(self, item: TextRequest) -> TextRequest:
        tokens = item.tokens
        if item.explain and tokens > self.explain_max_tokens:
            raise RequestError(f"an explanation was asked for {tokens} tokens; at most {self.explain_max_tokens} "
                               "per request are explained (explain_max_tokens); explain fewer or shorter texts",
                               kind="too_many_tokens_to_explain", code=413)
        if tokens > self.max_tokens:
            raise RequestError(f"request has {tokens} tokens; at most {self.max_tokens} per request (max_tokens); "
                               "split it into smaller requests", kind="too_many_tokens", code=413)
        return item

    def prepare(self, inputs: Sequence[TextRequest]) -> list:
        """Every text of the call tokenised together, then each request held to the token caps."""
        ids, truncated, offsets = self.tokenize([t for r in inputs for t in r.texts], any(r.explain for r in inputs))
        out: list = []
        start = 0
        for item in inputs:
            end = start + len(item.texts)
            item.ids, item.truncated = ids[start:end], truncated[start:end]
            item.offsets = offsets[start:end] if item.explain else []
            start = end
            try:
                out.append(self.check_tokens(item))
            except RequestError as err:
                out.append(err)
        return out

    def preprocess(self, inputs: Sequence[TextRequest]) -> list[MicroBatch]:
        ids = [i for r in inputs for i in r.ids]
        groups = micro_batches([len(i) for i in ids], self.batch_tokens, self.min_efficiency)
        padded, attention, sizes = padded_matrix(ids, groups, self.tokenizer.pad_token_id or 0)
        batches, start = [], 0
        for rows in groups:
            end = start + len(rows)
            width = sizes[end - 1]  # sorted: the group's last text is its longest
            inputs_ = {"input_ids": self._on(padded[start:end, :width]),
                       "attention_mask": self._on(attention[start:end, :width])}
            batches.append(MicroBatch(rows, inputs_, sum(sizes[start:end]), len(rows) * width))
            start = end
        return batches

    def _on(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)

    def forward(self, batches: list[MicroBatch]) -> torch.Tensor:
        """Every text's probabilities, in the call's order: the logits stay on the device until the last
        micro-batch is done, then one softmax and one transfer."""
        logits = torch.cat([self.net(**b.inputs).logits.float() for b in batches])
        found = torch.softmax(logits, dim=-1).cpu()
        probs = torch.empty_like(found)
        probs[torch.tensor([r for b in batches for r in b.rows])] = found
        return probs

    def postprocess(self, probs: torch.Tensor, inputs: Sequence[TextRequest]) -> list:
        rows, best = probs.tolist(), probs.argmax(dim=1).tolist()
        answers, start = [], 0
        for req in inputs:
            results = []
            for i, truncated in enumerate(req.truncated or [False] * len(req.texts), start):
                top = best[i]
                result = {"label": self.labels[top], "score": rows[i][top], "scores": dict(zip(self.labels, rows[i]))}
                if truncated:
                    result["truncated"] = True  # only the first max_length tokens were read
                mark(result, rows[i][top], self.review)
                results.append(result)
            start += len(req.texts)
            if req.explain:
                self.explain(req, results)
            answers.append(results[0] if req.single else results)
        return answers

    def explainer(self) -> torch.nn.Module:
        """A torch module to take gradients through: the served one, or for int8 an fp32 copy loaded once."""
        if self._explainer is None:
            net = getattr(self.net, "_orig_mod", self.net)  # torch.compile's wrapper holds the module
            if not isinstance(net, torch.nn.Module):
                net = AutoModelForSequenceClassification.from_pretrained(self.source).eval()
            self._explainer = net
        return self._explainer

    def explain(self, request: TextRequest, answers: Sequence[dict]) -> None:
        """Word attributions toward each text's predicted label (text_attributions.py)."""
        from .text_attributions import integrated_gradients, reference_token, words

        net, special = self.explainer(), set(self.tokenizer.all_special_ids)
        reference = reference_token(self.tokenizer)
        for i, (text, ids, answer) in enumerate(zip(request.texts, request.ids, answers)):
            found = integrated_gradients(net, ids, self.labels.index(answer["label"]), special, reference,
                                         self.explain_steps, self.batch_tokens)
            if request.offsets:
                answer["attributions"] = words(text, request.offsets[i], found.scores, request.truncated[i])
            else:
                tokens = self.tokenizer.convert_ids_to_tokens(ids)
                answer["attributions"] = [{"text": t, "score": s} for t, s, token in zip(tokens, found.scores, ids)
                                          if token not in special]
            answer["explanation"] = {"method": "integrated_gradients", "target": answer["label"],
                                     "steps": self.explain_steps, "convergence_delta": found.convergence_delta}

    def figures(self, inputs: Sequence[TextRequest], answers: Sequence[Any]) -> dict:
        lengths = [len(ids) for r in inputs for ids in r.ids]
        groups = micro_batches(lengths, self.batch_tokens, self.min_efficiency)
        padded = sum(len(g) * lengths[g[-1]] for g in groups)
        flat = [a for answer in answers for a in (answer if isinstance(answer, list) else [answer])]
        return {"Texts": len(lengths), "Tokens": sum(lengths),
                "PaddingEfficiency": 100.0 * sum(lengths) / padded if padded else None,
                "ExplanationsServed": sum(len(r.texts) for r in inputs if r.explain),
                "ReviewFlagged": sum(bool(a.get("review")) for a in flat)}

    def predict_texts(self, texts: Sequence[str]) -> list[dict]:
        """Plain strings in, one answer each (notebooks, benchmarks)."""
        return self.predict(self.prepare([TextRequest([t], True) for t in texts]))
