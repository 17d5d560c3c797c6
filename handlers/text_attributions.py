"""Which words drove a text classifier's answer: integrated gradients on the input embeddings (captum), for any
Hugging Face sequence classifier. The baseline keeps the special tokens and masks the rest, so a text's
attributions add up (within `convergence_delta`) to how far its words moved the predicted label's probability;
token scores are summed into the whitespace-separated words the user wrote."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Attribution:
    scores: list[float]  # one per token of the input ids
    convergence_delta: float  # |sum of scores - (f(input) - f(baseline))|: the integral's error


def reference_token(tokenizer: Any) -> int:
    """The baseline's token: mask, else unknown, else padding (every tokenizer has one of them)."""
    for name in ("mask_token_id", "unk_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            return getattr(tokenizer, name)
    return 0


def integrated_gradients(net: Any, ids: Sequence[int], target: int, special_ids: set[int],
                         reference_id: int, steps: int, batch_tokens: int) -> Attribution:
    """Token attributions toward class `target` for one text's ids.

    The `steps` interpolations run `batch_tokens // len(ids)` at a time, so one forward
    and backward pass holds as many tokens as a prediction's micro-batch does.
    """
    from captum.attr import LayerIntegratedGradients

    device = next(net.parameters()).device
    inputs = torch.tensor([list(ids)], device=device)
    baseline = torch.tensor([[i if i in special_ids else reference_id for i in ids]], device=device)
    mask = torch.ones_like(inputs)

    def probabilities(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(input_ids=input_ids, attention_mask=attention_mask).logits.float(), dim=-1)

    explainer = LayerIntegratedGradients(probabilities, net.get_input_embeddings())
    with torch.enable_grad():
        attributions, delta = explainer.attribute(
            inputs, baselines=baseline, target=target, additional_forward_args=(mask,), n_steps=steps,
            internal_batch_size=max(1, batch_tokens // max(1, len(ids))), return_convergence_delta=True,
        )
    per_token = attributions.float().sum(dim=-1)[0]
    return Attribution(per_token.tolist(), float(delta.abs().max()))


def words(text: str, offsets: Sequence[tuple[int, int]], scores: Sequence[float],
          truncated: bool = False) -> list[dict[str, Any]]:
    """Token scores summed into the whitespace-separated words of `text`, in order (special tokens have empty spans and
    are dropped; a word with no token scores 0; words past the truncation are left out)."""
    spans = [(m.start(), m.end()) for m in WORD.finditer(text)]
    starts = [s for s, _ in spans]
    totals: dict[int, float] = {}
    for (start, end), score in zip(offsets, scores):
        if end <= start:
            continue
        # The token's first visible character decides its word (offsets may include a leading space).
        first = start + (len(text[start:end]) - len(text[start:end].lstrip()))
        word = bisect.bisect_right(starts, min(first, end - 1)) - 1
        if word >= 0 and spans[word][0] <= first < spans[word][1]:
            totals[word] = totals.get(word, 0.0) + score
    last = max(totals, default=-1) if truncated else len(spans) - 1
    return [{"text": text[a:b], "score": totals.get(w, 0.0)} for w, (a, b) in enumerate(spans[: last + 1])]
