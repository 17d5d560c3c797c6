"""Small checkpoints of the kind users bring, made by the tests."""

from __future__ import annotations

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from marport.sentiment_data import load_splits


def bpe_tokenizer(texts, vocab_size):
    """A RoBERTa-style byte-level BPE tokenizer, as most user checkpoints carry."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    return RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def save_tiny_checkpoint(path, labels=("bad", "good")):
    """A checkpoint a user might bring: any labels, a BPE tokenizer, saved with save_pretrained."""
    torch.manual_seed(0)
    tokenizer = bpe_tokenizer([e.text for e in load_splits()["train"][:3000]], vocab_size=400)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(path)
    return path
