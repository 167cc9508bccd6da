"""Token counting with Mistral's own tokenizers (mistral-common, offline).

Admission control reserves `prompt tokens + max_tokens` before a request goes upstream, and the
simulated upstream reports `usage.prompt_tokens`; both call `TokenCounter.for_model(model)` so
their counts agree exactly.

Which tokenizer: legacy model names from mistral-common's own map (plus their public aliases)
get their SentencePiece or Tekken tokenizer; every current family (`mistral-small*`,
`codestral*`, `ministral*`, hub names like `mistralai/Mistral-Small-3.2-24B-Instruct-2506`, …)
gets the bundled v3 Tekken (`MistralTokenizer.v3(is_tekken=True)`). Only files shipped in the
mistral-common wheel are used; nothing is downloaded.

What `exact` means (`TokenCount.exact`): the count came from mistral-common encoding the request
with the tokenizer assigned to that model family. It is False when the model name is unknown,
when the assigned SentencePiece tokenizer cannot load (`sentencepiece` is not installed, so
Tekken stands in), or when mistral-common rejected the request and the conservative estimate
below was used. Caveat: current models use Tekken versions newer than the bundled v3 file; the
v3 count is what this module calls exact (an approximation the API-FACTS §3.1 spells out).

Speed: a plain-text chat (no tools; system, user and assistant messages with text content) is
rendered by `chat_template.render_chat` exactly as mistral-common would render it, and only its
texts go through the BPE. Anything else (tools, tool calls, images, a conversation
mistral-common refuses) takes the slow path, mistral-common itself; a property test holds the
two equal for every family in `_LOADERS`.

Failure mode: counting never raises for a well-formed list of message dicts. Anything
mistral-common refuses (OpenAI-style tool-call ids, a conversation ending with an assistant
message, image parts on a text tokenizer, …) falls back to `_estimate_chat`, which errs high:
every string in the request encoded, plus fixed overheads per string, per message and per
image. Tokenizers load lazily, at most once per process (Tekken: ~0.8 s, ~100 MB).
"""

from __future__ import annotations

import importlib.util
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from gateway.upstream.chat_template import RenderedChat, render_chat, template_for

TEKKEN_V3 = "tekken-v3"

# Tokenizer family → constructor. Only files that ship inside the mistral-common wheel.
_LOADERS: dict[str, Callable[[], MistralTokenizer]] = {
    "spm-v1": MistralTokenizer.v1,
    "spm-v2": MistralTokenizer.v2,
    "spm-v3": MistralTokenizer.v3,
    "spm-v7": MistralTokenizer.v7,
    "spm-v7-mm": lambda: MistralTokenizer.v7(is_mm=True),
    TEKKEN_V3: lambda: MistralTokenizer.v3(is_tekken=True),
    "tekken-v3-mm": lambda: MistralTokenizer.v3(is_tekken=True, is_mm=True),
}

# Legacy names: mistral-common's MODEL_NAME_TO_TOKENIZER_CLS (API-FACTS §3.1), plus aliases.
_LEGACY_MODELS: dict[str, str] = {
    "mistral-medium-2312": "spm-v1",
    "mistral-tiny-2312": "spm-v2",
    "mistral-small-2312": "spm-v2",
    "mistral-small-2402": "spm-v2",
    "mistral-large-2402": "spm-v2",
    "mistral-tiny-2407": "spm-v3",
    "mistral-large-2407": "spm-v3",
    "open-mixtral-8x22b-2404": "spm-v3",
    "codestral-2405": "spm-v3",
    "codestral-mamba-2407": "spm-v3",
    "ministral-8b-2410": TEKKEN_V3,
    "open-mistral-nemo-2407": TEKKEN_V3,
    "mistral-small-2409": TEKKEN_V3,
    "pixtral-12b-2409": "tekken-v3-mm",
    "mistral-large-2411": "spm-v7",
    "pixtral-large-2411": "spm-v7-mm",
    # Public aliases of the dated names above (La Plateforme's legacy model table).
    "open-mistral-7b": "spm-v2",
    "mistral-tiny": "spm-v2",
    "mistral-tiny-latest": "spm-v2",
    "open-mixtral-8x7b": "spm-v2",
    "open-mixtral-8x22b": "spm-v3",
    "open-codestral-mamba": "spm-v3",
    "codestral-mamba-latest": "spm-v3",
    "pixtral-12b": "tekken-v3-mm",
    "pixtral-12b-latest": "tekken-v3-mm",
    "pixtral-large-latest": "spm-v7-mm",
}

# Current families: the bundled v3 Tekken is the assigned tokenizer.
_CURRENT_PREFIXES: tuple[str, ...] = (
    "mistral-small",
    "mistral-medium",
    "mistral-large",
    "ministral",
    "codestral",
    "devstral",
    "magistral",
    "open-mistral-nemo",
    "mistral-nemo",
    "pixtral",
    "mistral-embed",
)

# Fallback-estimate overheads, chosen high on purpose (see `_estimate_chat`).
_PER_STRING_TOKENS = 3  # quotes, ": " and ", " around a JSON string in the rendered prompt
_PER_MESSAGE_TOKENS = 8  # [INST] [/INST] </s> [TOOL_CALLS] [TOOL_RESULTS] …
_PER_REQUEST_TOKENS = 16  # <s> and the [AVAILABLE_TOOLS] envelope
# An image part costs up to (1024/16)² patches + 64 row breaks on Pixtral 12B.
_PER_IMAGE_TOKENS = 4160
_MEDIA_PART_TYPES = frozenset(
    {"image_url", "image", "input_image", "input_audio", "audio", "document_url", "file"}
)

# Count caches, bounded by entries and by the characters of their keys: a key can be as big as
# a request body (4 MiB), so an entry bound alone would let distinct large prompts hold GiBs.
_CHAT_CACHE_ENTRIES = 2048
_TEXT_CACHE_ENTRIES = 8192
_CACHE_CHARS = 8_000_000  # per cache
_TEXT_CACHE_MIN_CHARS = 32  # shorter texts cost less to encode than to keep

# Words that are one Tekken token each with a leading space; the sampler keeps those that
# really are single tokens for the loaded tokenizer (checked once, on first use).
_SAMPLE_WORDS: tuple[str, ...] = (
    " the", " a", " gateway", " cost", " token", " model", " request", " stream", " upstream",
    " budget", " tenant", " quota", " answer", " simple", " fast", " small", " large", " data",
    " value", " system", " user", " time", " price", " limit", " route", " test", " check",
    " ready", " latency", " network", " server", " client", " cache", " queue", " window",
    " minute", " second", " hour", " day", " week", " month", " year",
)  # fmt: skip


K = TypeVar("K")
V = TypeVar("V")


class CountCache(Generic[K, V]):
    """An LRU map bounded by its number of entries and by the total size (characters or
    bytes) of its keys, given with each `put`. Not locked: its owner holds a lock."""

    __slots__ = ("_entries", "_max_entries", "_max_size", "_size")

    def __init__(self, max_entries: int, max_size: int) -> None:
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._max_entries, self._max_size, self._size = max_entries, max_size, 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._size = 0

    @property
    def size(self) -> int:
        """The total size of the keys held."""
        return self._size

    def get(self, key: K) -> V | None:
        """The value for `key` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Keep `value` for `key`, evicting the least recently used entries to stay within
        both bounds; a key bigger than the whole size bound is not kept."""
        if size > self._max_size:
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._size -= old[1]
        entries[key] = (value, size)
        self._size += size
        while len(entries) > self._max_entries or self._size > self._max_size:
            _, (_, evicted) = entries.popitem(last=False)
            self._size -= evicted


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count and whether it is exact (see the module docstring) or an estimate."""

    tokens: int
    exact: bool


def resolve_family(model: str) -> tuple[str, bool]:
    """(tokenizer family, known?) for an upstream model name; unknown names get Tekken v3."""
    name = model.strip().lower()
    if "/" in name:  # hub-style "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
        name = name.rsplit("/", 1)[1]
    if name in _LEGACY_MODELS:
        return _LEGACY_MODELS[name], True
    if name.startswith("mistral-tiny"):
        return "spm-v2", True
    if name.startswith(_CURRENT_PREFIXES):
        return TEKKEN_V3, True
    return TEKKEN_V3, False


def _sentencepiece_available() -> bool:
    return importlib.util.find_spec("sentencepiece") is not None


class ModelTokenizer:
    """Counts tokens for one model with one loaded mistral-common tokenizer (thread-safe)."""

    def __init__(self, model: str, family: str, exact: bool, tokenizer: MistralTokenizer) -> None:
        self.model = model
        self.family = family
        self.exact = exact
        self._tokenizer = tokenizer
        self._raw = tokenizer.instruct_tokenizer.tokenizer
        _speed_up_tekken(self._raw)
        self._bpe_len = _bpe_counter(self._raw)
        self._template = template_for(tokenizer)
        # Keys: a rendered chat (fast path) or the request's JSON (slow path); never equal.
        self._chat_cache: CountCache[RenderedChat | bytes, TokenCount] = CountCache(
            _CHAT_CACHE_ENTRIES, _CACHE_CHARS
        )
        # One text's BPE count: a conversation re-sends its history every turn, so each turn
        # encodes only its new messages (a text's count never depends on its neighbours).
        self._text_cache: CountCache[str, int] = CountCache(_TEXT_CACHE_ENTRIES, _CACHE_CHARS)
        self._lock = threading.Lock()
        self._words: tuple[str, ...] | None = None

    def count_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> TokenCount:
        """Prompt tokens of an OpenAI-format chat request, tools included (LRU-cached)."""
        rendered = None
        if self._template is not None:
            rendered = render_chat(messages, tools, self._template)
        # The rendered chat is its own cache key: no JSON dump, and a miss costs about 2 us
        # (hashing the texts, the dict update) against ~100 us of BPE saved by a hit.
        key = rendered if rendered is not None else orjson.dumps((messages, tools))
        with self._lock:
            cached = self._chat_cache.get(key)
        if cached is not None:
            return cached
        count = None if rendered is None else self._count_rendered(rendered)
        if count is None:
            count = self._count_chat_uncached(messages, tools)
        size = len(key) if isinstance(key, bytes) else sum(map(len, key[1]))
        with self._lock:
            self._chat_cache.put(key, count, size)
        return count

    def _count_chat_fast(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> TokenCount | None:
        """The fast path alone (uncached): None when the request needs mistral-common."""
        if self._template is None:
            return None
        rendered = render_chat(messages, tools, self._template)
        return None if rendered is None else self._count_rendered(rendered)

    def _count_rendered(self, rendered: RenderedChat) -> TokenCount | None:
        template_tokens, texts = rendered
        try:
            bpe_tokens = self._bpe_tokens(texts)
        # Text the BPE cannot take (a lone surrogate for SentencePiece): the slow path meets
        # the same text and fails the same way, as it would have without the fast path.
        except Exception:
            return None
        return TokenCount(template_tokens + bpe_tokens, exact=self.exact)

    def _bpe_tokens(self, texts: tuple[str, ...]) -> int:
        """The BPE tokens of `texts`, each text's count cached (the BPE runs outside the lock)."""
        cache, total = self._text_cache, 0
        new: list[str] = []
        with self._lock:
            for text in texts:
                known = cache.get(text)
                if known is None:
                    new.append(text)
                else:
                    total += known
        if not new:
            return total
        counted = [(text, self._bpe_len(text)) for text in new]
        with self._lock:
            for text, tokens in counted:
                total += tokens
                if len(text) >= _TEXT_CACHE_MIN_CHARS:
                    cache.put(text, tokens, len(text))
        return total

    def _count_chat_uncached(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> TokenCount:
        try:
            request = ChatCompletionRequest.from_openai(messages, tools=tools)
            tokens = self._count_request(request)
        # mistral-common raises its own exceptions, pydantic errors, AssertionError and
        # ValueError for requests it refuses; every one of them means "estimate instead".
        except Exception:
            return TokenCount(self._estimate_chat(messages, tools), exact=False)
        return TokenCount(tokens, exact=self.exact)

    def _count_request(self, request: ChatCompletionRequest) -> int:
        """`len(encode_chat_completion(request).tokens)`, without the work counting does not
        need: mistral-common ends every encode by decoding the tokens back to text (half of
        its cost). Same validation, normalisation and per-message encoders, in the same order
        as `InstructTokenizerBase.encode_instruct`; a unit test holds the two equal."""
        tokenizer = self._tokenizer
        validated = tokenizer._chat_completion_request_validator.validate_request(request)
        instruct = tokenizer._instruct_request_normalizer.from_chat_completion_request(validated)
        encoder = tokenizer.instruct_tokenizer
        encoder.validate_messages(instruct.messages)
        first_user, last_user = encoder.find_first_last_user(instruct)
        total = len(encoder.start())
        for index, message in enumerate(instruct.messages):
            if isinstance(message, UserMessage):
                tokens = encoder.encode_user_message(
                    message,
                    instruct.available_tools,
                    index == last_user,
                    index == first_user,
                    system_prompt=instruct.system_prompt,
                    force_img_first=True,
                    settings=instruct.settings,
                )[0]
            elif isinstance(message, ToolMessage):
                tokens = encoder.encode_tool_message(message, index < last_user)[0]
            elif isinstance(message, AssistantMessage):
                tokens = encoder.encode_assistant_message(
                    message=message, is_before_last_user_message=index < last_user
                )
            elif isinstance(message, SystemMessage):
                tokens = encoder.encode_system_message(message)[0]
            else:
                raise TypeError(f"unknown message type {type(message).__name__}")
            total += len(tokens) if tokens is not None else 0
        return total

    def _estimate_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> int:
        """Conservative prompt size: every string encoded plus fixed overheads (errs high)."""
        strings: list[str] = []
        images = _collect_strings(messages, strings) + _collect_strings(tools or [], strings)
        text_tokens = self.count_text("\n".join(strings)).tokens if strings else 0
        return (
            text_tokens
            + _PER_STRING_TOKENS * len(strings)
            + _PER_MESSAGE_TOKENS * len(messages)
            + _PER_IMAGE_TOKENS * images
            + _PER_REQUEST_TOKENS
        )

    def count_text(self, text: str) -> TokenCount:
        """Tokens of raw text, without BOS/EOS."""
        return TokenCount(self._bpe_len(text), exact=self.exact)

    def count_texts(self, texts: Iterable[str]) -> TokenCount:
        """Total tokens of several texts (an embeddings `input` list)."""
        return TokenCount(sum(map(self._bpe_len, texts)), exact=self.exact)

    def count_fim(self, prompt: str, suffix: str | None = None) -> TokenCount:
        """Prompt tokens of a fill-in-the-middle request."""
        try:
            request = FIMRequest(prompt=prompt, suffix=suffix or "")
            return TokenCount(len(self._tokenizer.encode_fim(request).tokens), exact=self.exact)
        except Exception:  # tokenizers without FIM support (v1, v2): estimate high
            text_tokens = self.count_text(prompt).tokens + self.count_text(suffix or "").tokens
            return TokenCount(text_tokens + _PER_REQUEST_TOKENS, exact=False)

    def sample_text(self, n: int, seed: str) -> list[str]:
        """n text pieces, one token each, whose concatenation re-tokenises to exactly n tokens."""
        if n <= 0:
            return []
        return random.Random(seed).choices(self._sample_words(), k=n)

    def _sample_words(self) -> tuple[str, ...]:
        if self._words is None:
            encode = self._raw.encode
            words = tuple(w for w in _SAMPLE_WORDS if len(encode(w, bos=False, eos=False)) == 1)
            # Pieces must not merge across their boundaries, or the output would re-count
            # to fewer tokens than the simulator reports.
            joined = "".join(words * 2)
            if not words or len(encode(joined, bos=False, eos=False)) != 2 * len(words):
                raise RuntimeError(f"no stable single-token words for tokenizer {self.family}")
            self._words = words
        return self._words


def _tekken_bpe(raw: Tekkenizer) -> Callable[[str], list[int]]:
    """The tiktoken call behind a Tekkenizer's encode: ids without the special-token offset."""
    model = raw._model
    # With no special tokens in the BPE model (Tekken keeps them apart), tiktoken's encode is
    # encode_ordinary plus a scan for specials that cannot match: skip the scan (3.5x faster).
    return model.encode_ordinary if not model.special_tokens_set else model.encode


def _speed_up_tekken(raw: object) -> None:
    """Give a Tekkenizer a faster `encode` with the same result (tested equal): it reads
    `num_special_tokens` once per call, not once per token (a property lookup that was half of
    the encode), and skips tiktoken's special-token scan when there is nothing to find."""
    if not isinstance(raw, Tekkenizer) or "encode" in vars(raw):
        return
    bpe, offset = _tekken_bpe(raw), raw.num_special_tokens
    bos_id, eos_id = raw.bos_id, raw.eos_id

    def encode(s: str, bos: bool, eos: bool) -> list[int]:
        tokens = [t + offset for t in bpe(s)]
        if bos:
            tokens.insert(0, bos_id)
        if eos:
            tokens.append(eos_id)
        return tokens

    raw.encode = encode  # type: ignore[method-assign]


def _bpe_counter(raw: Any) -> Callable[[str], int]:
    """`len(raw.encode(s, bos=False, eos=False))`; for Tekken without building the id list
    (adding the special-token offset to every id was a fifth of the encode)."""
    if isinstance(raw, Tekkenizer):
        bpe = _tekken_bpe(raw)
        return lambda s: len(bpe(s))
    encode = raw.encode
    return lambda s: len(encode(s, bos=False, eos=False))


def _collect_strings(value: Any, out: list[str]) -> int:
    """Append every string (keys and values) under value to out; return the media part count."""
    if isinstance(value, str):
        out.append(value)
        return 0
    if isinstance(value, dict):
        if value.get("type") in _MEDIA_PART_TYPES:  # a data URL is bytes, not prompt text
            return 1
        media = 0
        for key, item in value.items():
            out.append(str(key))
            media += _collect_strings(item, out)
        return media
    if isinstance(value, list | tuple):
        return sum(_collect_strings(item, out) for item in value)
    if value is not None:
        out.append(str(value))
    return 0


class TokenCounter:
    """Picks and caches a `ModelTokenizer` per model name; tokenizers load once per process."""

    _tokenizers: dict[str, MistralTokenizer] = {}  # noqa: RUF012 - process-wide cache, on purpose
    _models: dict[str, ModelTokenizer] = {}  # noqa: RUF012
    _lock = threading.Lock()

    @classmethod
    def for_model(cls, model: str) -> ModelTokenizer:
        """The tokenizer for an upstream model name (unknown names: Tekken v3, exact=False)."""
        found = cls._models.get(model)
        if found is not None:
            return found
        family, exact = resolve_family(model)
        if family.startswith("spm") and not _sentencepiece_available():
            family, exact = TEKKEN_V3, False  # `sentencepiece` is an optional extra
        with cls._lock:
            found = cls._models.get(model)
            if found is None:
                found = ModelTokenizer(model, family, exact, cls._load(family))
                cls._models[model] = found
        return found

    @classmethod
    def preload(cls, models: Iterable[str]) -> None:
        """Load the tokenizers these models need now, not on their first request."""
        for model in models:
            cls.for_model(model)

    @classmethod
    def _load(cls, family: str) -> MistralTokenizer:
        # Called with cls._lock held, so two threads never load the same file twice.
        tokenizer = cls._tokenizers.get(family)
        if tokenizer is None:
            tokenizer = _LOADERS[family]()
            cls._tokenizers[family] = tokenizer
        return tokenizer
