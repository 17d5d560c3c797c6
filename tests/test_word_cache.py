"""The word cache (handlers/word_cache.py) gives exactly the fast tokenizer's ids, or declines the text."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from marport.build import extract_archive
from marport.handlers import sentiment, word_cache
from marport.handlers.serving_common import Request
from marport.sentiment_data import load_splits
from tests.conftest import built_archive
from tests.test_sentiment_unit import bpe_tokenizer, spy_on_encoder

MAX_LENGTH = 40  # short, so that generated texts are truncated often

# Mostly what reviews are made of, plus what the cache must decline: accents, CJK, controls, tabs, the
# added tokens' texts in any case, and GPT-2's contractions and runs of spaces.
ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,!?'\"-()[]<>/#@&*:;_~`\\")
                           + ["  ", "\t", "\n", "\r", "\x0b", "\x00", "\x7f", "\x1d", "é", "É", "中", "\u00a0",
                              "[MASK]", "[mask]", "<s>", "<MASK>", "'s", "'ll", "'D", "don't", "great", "food"])
TEXTS = st.lists(ALPHABET, min_size=0, max_size=80).map("".join)


def backend_of(tokenizer, max_length=MAX_LENGTH):
    return sentiment.batch_encoder(tokenizer, max_length)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The demo model's BERT-style tokenizer and RoBERTa-style byte-level BPE ones (without and with a prefix space)."""
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    demo = AutoTokenizer.from_pretrained(root / "checkpoint")
    corpus = [e.text for e in load_splits()["train"][:2000]]
    bpe = bpe_tokenizer(corpus, vocab_size=600)
    spaced = copy.deepcopy(bpe)
    spaced.backend_tokenizer.pre_tokenizer.add_prefix_space = True
    return {"bert": demo, "bytelevel": bpe, "bytelevel-prefix-space": spaced}


@pytest.mark.parametrize("name", ["bert", "bytelevel", "bytelevel-prefix-space"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_the_cache_gives_the_tokenizers_own_ids_or_declines(tokenizers, name, text):
    backend = backend_of(tokenizers[name])
    cache = word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH)
    assert cache is not None and cache.shape == name.split("-")[0]
    added = [t.content.lower() for t in backend.get_added_tokens_decoder().values()]
    allowed = {chr(c) for c in range(0x20, 0x7f)} | (set("\t\n\r") if name == "bert" else set())
    declinable = any(c not in allowed for c in text) or any(a in text.lower() for a in added)
    got = cache.encode(text)
    assert (got is None) == declinable
    if got is None:
        return
    expected = backend.encode(text)
    assert got == (expected.ids, bool(expected.overflowing))
    assert cache.encode(text) == got  # again, now from the cache


SHARED: dict = {}  # one cache per shape across examples: keys cached from one text serve the next


@pytest.mark.parametrize("name", ["bert", "bytelevel", "bytelevel-prefix-space"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4))
def test_a_warm_cache_gives_the_same_ids(tokenizers, name, texts):
    """Chunks and words cached from earlier texts (with other spacing around them) answer later ones exactly."""
    backend = backend_of(tokenizers[name])
    cache = SHARED.setdefault(name, word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH))
    for text in texts:
        got = cache.encode(text)
        if got is not None:
            expected = backend.encode(text)
            assert got == (expected.ids, bool(expected.overflowing)), text


def test_plain_reviews_are_taken_and_truncated_as_the_tokenizer_does(tokenizers):
    for name, tokenizer in tokenizers.items():
        backend = backend_of(tokenizer)
        cache = word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH)
        long = "The room was clean, the staff friendly; breakfast wasn't great. " * 8
        ids, truncated = cache.encode(long)
        assert truncated and len(ids) == MAX_LENGTH and ids == backend.encode(long).ids, name
        ids, truncated = cache.encode("Great food")
        assert not truncated and ids == backend.encode("Great food").ids, name


def test_long_words_and_runs_of_spaces_match_the_tokenizer(tokenizers):
    """Past WordPiece's 100 characters a word is [UNK]; byte-level BPE splits it; spaces run as GPT-2's rule says."""
    for name, tokenizer in tokenizers.items():
        backend = backend_of(tokenizer, 512)
        cache = word_cache.WordCache.for_tokenizer(backend, 512)
        for text in ("a" + "bc" * 75 + " ok", "word   spaced    out ", "   lead", "x" * 101, "1234567890" * 12):
            expected = backend.encode(text)
            assert cache.encode(text) == (expected.ids, bool(expected.overflowing)), (name, text)


def test_added_tokens_non_ascii_and_controls_go_to_the_tokenizer(tokenizers):
    cache = word_cache.WordCache.for_tokenizer(backend_of(tokenizers["bert"]), MAX_LENGTH)
    for text in ("good [MASK] food", "good [mask] food", "café", "ab\x00cd", "tab\x0bbed"):
        assert cache.encode(text) is None, text
    assert cache.encode("tab\tand\nnewline") is not None  # the BERT normaliser makes these spaces
    bpe = word_cache.WordCache.for_tokenizer(backend_of(tokenizers["bytelevel"]), MAX_LENGTH)
    for text in ("a <mask> b", "line\nbreak", "</s>"):
        assert bpe.encode(text) is None, text


def test_memory_is_bounded(tokenizers, monkeypatch):
    monkeypatch.setattr(word_cache, "MAX_WORDS", 5)
    cache = word_cache.WordCache.for_tokenizer(backend_of(tokenizers["bert"]), 512)
    cache.encode("x" * (word_cache.MAX_WORD_CHARS + 1))
    assert not cache.cache  # a long word is split every time, never kept
    for i in range(20):
        cache.encode(f"word{i} other{i}")
        assert len(cache.cache) <= 5


def test_unknown_shapes_get_no_cache(tokenizers):
    from tokenizers import normalizers

    backend = backend_of(tokenizers["bert"])
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    assert word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH) is None


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    return sentiment.load(str(root))


def test_the_core_uses_the_cache_and_one_backend_call_for_the_rest(demo, monkeypatch):
    assert demo.words is not None
    texts = ["Great stay", "Café au lait was cold", "Awful [MASK] service", "Fine"]
    expected = sentiment.tokenize(dataclasses.replace(demo, words=None), texts)
    calls = spy_on_encoder(demo, monkeypatch)
    assert sentiment.tokenize(demo, texts)[:2] == expected[:2]
    assert calls == [["Café au lait was cold", "Awful [MASK] service"]]
    items = [sentiment.read_request(Request(body=t, content_type="text/plain"), demo) for t in texts]
    assert [p.ids for p in sentiment.parse_batch(demo, items)] == [[ids] for ids in expected[0]]


def test_word_cache_false_turns_it_off(tmp_path_factory):
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    assert sentiment.load(str(root), {"word_cache": False}).words is None
