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

# Mostly what reviews are made of, plus the hard cases: accents (composed and combining), curly quotes, CJK, emoji,
# characters whose case or decomposition is special, every kind of whitespace and control, the added tokens' texts
# in any case, and GPT-2's contractions and runs of spaces.
UNICODE = ["é", "É", "e\u0301", "\u0301", "中", "文", "’", "“", "”", "ß", "İ", "Σ", "ς", "ﬁ", "①", "Ⅻ", "ǅ", "ﾊ", "😀",
           "👍🏽", "\u00a0", "\u3000", "\u2028", "\u0085", "\u1680", "\u180e", "\u200b", "\ufeff", "\ufffd", "\u202e",
           "\x1c", "\x1f", "ไทย", "عربي", "café", "naïve", "don’t"]
ALPHABET = st.sampled_from(list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,!?'\"-()[]<>/#@&*:;_~`\\")
                           + ["  ", "\t", "\n", "\r", "\x0b", "\x00", "\x7f", "\x1d", "[MASK]", "[mask]", "<s>",
                              "<MASK>", "'s", "'ll", "'D", "don't", "great", "food"] + UNICODE)
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
    got = cache.encode(text)
    assert (got is None) == declined(text, backend)
    if got is None:
        return
    expected = backend.encode(text)
    assert got == (expected.ids, bool(expected.overflowing))
    assert cache.encode(text) == got  # again, now from the cache


def declined(text: str, backend) -> bool:
    """What the cache leaves to the tokenizer: a text holding an added token's text, in any case."""
    return any(t.content.lower() in text.lower() for t in backend.get_added_tokens_decoder().values())


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


def test_added_tokens_go_to_the_tokenizer_and_other_texts_chunk_by_chunk(tokenizers):
    backend = backend_of(tokenizers["bert"])
    cache = word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH)
    for text in ("good [MASK] food", "good [mask] food", "[Mask]"):
        assert cache.encode(text) is None, text
    for text in ("tab\tand\nnewline", "Café au lait", "ab\x00cd", "tab\x0bbed", "don’t “quote”", "北京 很好 😀"):
        expected = backend.encode(text)
        assert cache.encode(text) == (expected.ids, bool(expected.overflowing)), text
    bpe_backend = backend_of(tokenizers["bytelevel"])
    bpe = word_cache.WordCache.for_tokenizer(bpe_backend, MAX_LENGTH)
    for text in ("a <mask> b", "</s>"):
        assert bpe.encode(text) is None, text
    for text in ("Café au lait", "don’t “quote” 😀", " leading café", "line\nbreak", "line\n break café",
                 "nbsp\u00a0 café", "two  spaces é ", "\n\nstarts with lines"):
        expected = bpe_backend.encode(text)
        assert bpe.encode(text) == (expected.ids, bool(expected.overflowing)), text


def test_added_tokens_the_normaliser_forms(tokenizers):
    """A token matched after normalisation ("[EXTRÁ]" becomes "[extra]") is found within its chunk by the tokenizer
    itself; one with a space inside could be formed across chunks, so such a tokenizer gets no cache."""
    tokenizer = copy.deepcopy(tokenizers["bert"])
    tokenizer.add_tokens(["[extra]"])  # normalised, as added tokens are by default
    backend = backend_of(tokenizer)
    cache = word_cache.WordCache.for_tokenizer(backend, MAX_LENGTH)
    extra = tokenizer.convert_tokens_to_ids("[extra]")
    for text in ("good [EXTRÁ] é", "x\x00 [EXTRA\x00] y’"):
        expected = backend.encode(text)
        assert extra in expected.ids and cache.encode(text) == (expected.ids, False), text
    tokenizer.add_tokens(["new york"])
    assert word_cache.WordCache.for_tokenizer(backend_of(tokenizer), MAX_LENGTH) is None


def test_memory_is_bounded(tokenizers, monkeypatch):
    monkeypatch.setattr(word_cache, "MAX_WORDS", 5)
    cache = word_cache.WordCache.for_tokenizer(backend_of(tokenizers["bert"]), 512)
    cache.encode("x" * (word_cache.MAX_WORD_CHARS + 1))
    assert not cache.cache  # a long word is split every time, never kept
    for i in range(20):
        cache.encode(f"word{i} other{i}")
        assert len(cache.cache) <= 5
    backend = backend_of(tokenizers["bert"], 512)
    for i in range(20):  # texts beyond ASCII too, with chunks seen before the cache starts over in the middle
        text = f"word{i} café{i} other{i} naïve{i} word{i + 1} thé{i} x{i} y{i}"
        assert cache.encode(text) == (backend.encode(text).ids, False)
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
    assert calls == [["Awful [MASK] service"]]  # "Café ..." is taken chunk by chunk
    items = [sentiment.read_request(Request(body=t, content_type="text/plain"), demo) for t in texts]
    assert [p.ids for p in sentiment.parse_batch(demo, items)] == [[ids] for ids in expected[0]]


def test_word_cache_false_turns_it_off(tmp_path_factory):
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    assert sentiment.load(str(root), {"word_cache": False}).words is None
