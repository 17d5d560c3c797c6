"""Token ids for texts from a cache of chunks and words, equal to the fast tokenizer's own.

Profiling issue 21's handler showed the Rust tokenizer's per-text bookkeeping (normalised strings
with character alignments, one Encoding object per text) costing more than the rest of the
handler: about 20 us a review on this project's 2 cores, most of it not the word-piece lookup.
Review text repeats its words, so a cache answers most of a text with one dict lookup per
space-separated chunk ("great," is one key, holding the ids of "great" and ","); a chunk seen for
the first time is split into the pre-tokeniser's words by the regular expressions below and each
word by the tokenizer's own model (`backend.model.tokenize`), so the vocabulary and the splitting
rules stay the library's. A chunk's ids are its words' ids because neither pre-tokeniser looks
across a single space: BERT's drops whitespace, and GPT-2's regex starts each word after one space
with that space (` ?[A-Za-z]+`, ...), so a text whose chunks are separated by single spaces splits
exactly as its chunks do.

Only what is exactly known is taken this way, decided per text:

- two tokenizer shapes, read from the tokenizer's own JSON at load: BERT-style (BertNormalizer,
  BertPreTokenizer, WordPiece) and GPT-2/RoBERTa byte-level BPE (no normaliser, ByteLevel with its
  regex); any other shape gets no cache (`WordCache.for_tokenizer` answers None);
- no text in which an added token's text (`[MASK]`, `<s>`, ...) appears in any case: the tokenizer
  matches those in the raw text before anything else;
- texts of printable ASCII (for GPT-2's rule, with single spaces between chunks and none at the end)
  go through the rules above: lower-casing is str.lower, accents and Chinese characters do not occur,
  and the pre-tokenisers reduce to the regular expressions below;
- any other text (accents, typographic quotes, CJK, emoji, controls, line breaks) is cut at spaces,
  and a chunk seen for the first time is encoded by the backend itself, normaliser included, so no
  Unicode rule is written here. That its chunks' ids are the text's follows from the shape (see
  `_other_keys`): BERT's normaliser works character by character and its pre-tokeniser always ends a
  word at a space; GPT-2's regex starts afresh before a space that a non-space follows. Every text the
  cache declines (those with an added token) goes to the Rust tokenizer, in one call for all of them.

tests/test_word_cache.py holds the cache to the tokenizer's own ids with generated texts (hypothesis).
Packed into each sentiment archive (its marport_serving package).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence

MAX_WORDS = 100_000  # cached chunks and words before the cache starts over: bounds memory (about 20 MB)
MAX_WORD_CHARS = 48  # longer chunks and words are split every time, never cached: no request can fill memory
# New chunks of a text beyond ASCII are encoded one call each up to this many (a review brings one or two), in one
# batch call past it (a long text of new words: half the time per chunk, so it costs at most about 2x one call for
# the whole text).
FEW_NEW_CHUNKS = 4

# BERT's pre-tokeniser splits on whitespace and makes each punctuation character a word; in ASCII
# every printable character that is not a letter or digit is punctuation to it.
BERT_WORDS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")
# GPT-2's pre-tokenising pattern (which ByteLevel uses) restricted to printable ASCII, where \p{L} is a letter
# and \p{N} a digit.
BYTE_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")
BYTE_SPACE = "\u0120"  # how the byte-level alphabet writes a space (printable ASCII stands for itself)
BYTE_CHUNKS = re.compile(r" ?[^ ]+").findall  # a text's chunks with their one leading space each
# Any text cut before each space that a non-space follows: where GPT-2's regex starts a word afresh (see _other_keys).
BYTE_CUTS = re.compile(r"(?= \S)").split


def _shape(spec: dict) -> str | None:
    """'bert', 'bytelevel' or None, from a tokenizer's JSON."""
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer"), spec.get("pre_tokenizer") or {}
    if (model.get("type") == "WordPiece" and isinstance(norm, dict) and norm.get("type") == "BertNormalizer"
            and norm.get("clean_text", True) and pre.get("type") == "BertPreTokenizer"):
        return "bert"
    if (model.get("type") == "BPE" and norm is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not model.get("dropout") and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix")):
        return "bytelevel"
    return None


class WordCache:
    """Encodes eligible texts word by word; `encode` answers None for a text it does not take."""

    def __init__(self, backend: Any, shape: str, max_length: int, lowercase: bool, prefix_space: bool,
                 added: Sequence[str]):
        self.backend, self.model, self.shape = backend, backend.model, shape
        self.lowercase, self.prefix_space = lowercase, prefix_space
        self.words_of = BERT_WORDS.findall if shape == "bert" else BYTE_WORDS.findall
        # Any added token's text, in any case, sends the text to the tokenizer (which matches them first).
        self.has_added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE).search if added else None
        self.cache: dict[str, list[int]] = {}
        self.prefix, self.suffix = self._specials(backend)
        self.room = max_length - len(self.prefix) - len(self.suffix)  # sequence tokens a text may keep
        self.end = len(self.prefix) + self.room  # where the text's own ids must stop

    @classmethod
    def for_tokenizer(cls, backend: Any, max_length: int) -> "WordCache | None":
        """A cache for this fast tokenizer's backend (tokenizers.Tokenizer), or None for a shape it does not know."""
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - a backend that cannot describe itself gets no cache
            return None
        shape = _shape(spec)
        if shape is None:
            return None
        norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
        tokens = [t for t in spec.get("added_tokens") or [] if t.get("content")]
        if shape == "bert" and any(t.get("normalized") and any(c.isspace() for c in t["content"]) for t in tokens):
            return None  # the normaliser could form such a token across a chunk's edge: only the tokenizer can tell
        added = [t["content"] for t in tokens]
        try:
            cache = cls(backend, shape, max_length, lowercase=bool(norm.get("lowercase", False)),
                        prefix_space=bool(pre.get("add_prefix_space", False)), added=added)
        except ValueError:  # a post-processor that does not wrap a text's own ids as expected: no cache
            return None
        return cache if cache.room > 0 else None

    def _specials(self, backend: Any) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a text's own (such as [CLS] ... [SEP])."""
        probe = "hello"
        own = [t.id for t in self.model.tokenize(self._piece(" " * self.prefix_space + probe))]  # as encode() prepares it
        ids = backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(ids) - len(own) + 1):
            if ids[start : start + len(own)] == own:
                return ids[:start], ids[start + len(own):]
        raise ValueError("cannot find a text's own ids between the post-processor's special tokens")

    def _piece(self, word: str) -> str:
        return word.replace(" ", BYTE_SPACE) if self.shape == "bytelevel" else word

    def _ids(self, key: str) -> list[int]:
        """The ids of a chunk or word of printable ASCII (the same for a word: it is its own only word), kept if short."""
        ids = [t.id for word in self.words_of(key) for t in self.model.tokenize(self._piece(word))]
        self._keep(key, ids)
        return ids

    def _keep(self, key: str, ids: list[int]) -> None:
        if len(key) <= MAX_WORD_CHARS:
            if len(self.cache) >= MAX_WORDS:
                self.cache.clear()
            self.cache[key] = ids

    def _learn(self, chunks: Sequence[str]) -> dict[str, list[int]]:
        """The ids of chunks of any text, each from the backend itself (its normaliser and pre-tokeniser included),
        kept if short. The backend truncates at max_length, which only cuts a chunk the text is cut within."""
        if len(chunks) > FEW_NEW_CHUNKS:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            found = {chunk: e.ids for chunk, e in zip(chunks, encode(list(chunks), add_special_tokens=False))}
        else:
            found = {chunk: self.backend.encode(chunk, add_special_tokens=False).ids for chunk in chunks}
        for chunk, ids in found.items():
            self._keep(chunk, ids)
        return found

    def _other_keys(self, text: str) -> list[str]:
        """The chunks of a text that is not plain ASCII (accents, curly quotes, CJK, emoji, controls), each of which
        the backend encodes alone to the ids it gives it in the text.

        BERT: cut at ASCII spaces. Its normaliser works character by character (NFD reorders marks only between
        two base characters, and a space is one) and its pre-tokeniser always ends a word at a space.
        GPT-2's regex: cut before each space followed by a non-space. No match runs across such a space except
        whitespace (`\\s+(?!\\S)`), and that one, reaching the non-space, backs off to end before the space, as it
        does at the end of the chunk alone; so the regex starts afresh at each cut, in the text and in the chunk.
        """
        return [chunk for chunk in (text.split(" ") if self.shape == "bert" else BYTE_CUTS(text)) if chunk]

    def _encode_other(self, text: str) -> tuple[list[int], bool]:
        keys = self._other_keys(text)
        found = self._learn([key for key in dict.fromkeys(keys) if key not in self.cache])
        # A key missing now is long (never kept), or was dropped when the cache started over while learning.
        return self._join(keys, lambda key: found[key] if key in found else self._learn([key])[key])

    def _join(self, keys: list[str], missing: Callable[[str], list[int]]) -> tuple[list[int], bool]:
        """The text's ids from its keys' (cached, else `missing(key)`), between the special tokens, cut to max_length."""
        get, seq = self.cache.get, self.prefix.copy()
        for key in keys:
            ids = get(key)
            seq += ids if ids is not None else missing(key)
        if len(seq) > self.end:
            return seq[: self.end] + self.suffix, True
        seq += self.suffix
        return seq, False

    def encode(self, text: str) -> tuple[list[int], bool] | None:
        """(ids with the special tokens, truncated?) as the backend would give them, or None."""
        # The tokenizer matches its added tokens in the raw text first: any of them, in any case, and it is its call.
        if self.has_added and self.has_added(text):
            return None
        if self.prefix_space and text and not text.startswith(" "):
            text = " " + text  # as ByteLevel(add_prefix_space=True) does; it makes no run of spaces
        # str.isprintable is printable ASCII and the space, once isascii holds: what the rules below take (GPT-2's
        # with single spaces between chunks). Other texts: chunk by chunk, each new one through the tokenizer.
        if not (text.isascii() and text.isprintable()) or (self.shape == "bytelevel" and ("  " in text or text.endswith(" "))):
            return self._encode_other(text)
        if self.lowercase:
            text = text.lower()
        return self._join(text.split() if self.shape == "bert" else BYTE_CHUNKS(text), self._ids)
