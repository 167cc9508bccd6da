"""Token counting: tokenizer choice per model, exact chat counts, the conservative fallback."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mistral_common.protocol.fim.request import FIMRequest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest

from gateway.upstream.tokenizer import (
    TEKKEN_V3,
    CountCache,
    TokenCount,
    TokenCounter,
    resolve_family,
)

PROSE = (
    "The gateway reserves prompt tokens plus max_tokens before it calls the upstream, then "
    "settles from the usage the upstream reports. Déjà vu: naïve budgets drift, 数字 too. "
) * 4

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def tool_conversation(call_id: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": "sunny, 21°C"},
        {"role": "user", "content": "And tomorrow?"},
    ]


VALID_CHATS: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    ([{"role": "user", "content": "hi"}], None),
    (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": PROSE},
            {"role": "assistant", "content": "Short version: reserve, then settle."},
            {"role": "user", "content": "def f(x):\n    return {'a': [x, x ** 2]}  # why?"},
        ],
        None,
    ),
    ([{"role": "user", "content": [{"type": "text", "text": PROSE}]}], TOOLS),
    (tool_conversation("abcDEF123"), TOOLS),
]


def true_count(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    tokenizer = TokenCounter.for_model("mistral-small-latest")._tokenizer
    request = ChatCompletionRequest.from_openai(messages, tools=tools)
    return len(tokenizer.encode_chat_completion(request).tokens)


@pytest.mark.parametrize(
    ("model", "family", "known"),
    [
        ("mistral-small-latest", TEKKEN_V3, True),
        ("mistral-large-2512", TEKKEN_V3, True),
        ("codestral-latest", TEKKEN_V3, True),
        ("devstral-small-2507", TEKKEN_V3, True),
        ("magistral-medium-latest", TEKKEN_V3, True),
        ("ministral-8b-latest", TEKKEN_V3, True),
        ("open-mistral-nemo", TEKKEN_V3, True),
        ("mistral-embed", TEKKEN_V3, True),
        ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", TEKKEN_V3, True),
        ("pixtral-12b-2409", "tekken-v3-mm", True),
        ("open-mistral-7b", "spm-v2", True),
        ("mistral-tiny-2312", "spm-v2", True),
        ("mistral-tiny-2407", "spm-v3", True),
        ("mistral-medium-2312", "spm-v1", True),
        ("mistral-small-2402", "spm-v2", True),
        ("mistral-large-2411", "spm-v7", True),
        ("gpt-4o", TEKKEN_V3, False),
        ("some-local-finetune", TEKKEN_V3, False),
    ],
)
def test_model_names_pick_their_tokenizer_family(model: str, family: str, known: bool) -> None:
    assert resolve_family(model) == (family, known)


def test_tokenizers_load_once_and_models_are_cached() -> None:
    small = TokenCounter.for_model("mistral-small-latest")
    assert TokenCounter.for_model("mistral-small-latest") is small
    other = TokenCounter.for_model("codestral-latest")
    assert other._tokenizer is small._tokenizer  # one Tekken for every current model
    assert small.exact and small.family == TEKKEN_V3


def test_unknown_model_uses_tekken_but_is_not_exact() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    assert counter.family == TEKKEN_V3 and not counter.exact
    count = counter.count_chat([{"role": "user", "content": "hi"}])
    assert count == TokenCount(true_count([{"role": "user", "content": "hi"}], None), False)


def test_spm_models_fall_back_to_tekken_without_sentencepiece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TokenCounter, "_models", {})
    monkeypatch.setattr("gateway.upstream.tokenizer._sentencepiece_available", lambda: False)
    counter = TokenCounter.for_model("open-mistral-7b")
    assert counter.family == TEKKEN_V3 and not counter.exact
    assert counter.count_text("hello world") == TokenCount(2, False)


@pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is None, reason="sentencepiece not installed"
)
def test_spm_models_use_sentencepiece_when_installed() -> None:
    counter = TokenCounter.for_model("open-mistral-7b")
    assert counter.family == "spm-v2" and counter.exact


@pytest.mark.parametrize(("messages", "tools"), VALID_CHATS)
def test_count_chat_is_mistral_commons_count(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> None:
    counter = TokenCounter.for_model("mistral-small-latest")
    assert counter.count_chat(messages, tools) == TokenCount(true_count(messages, tools), True)
    assert counter.count_chat(messages, tools).tokens == true_count(messages, tools)  # cached


@pytest.mark.parametrize(("messages", "tools"), VALID_CHATS)
def test_fallback_estimate_is_never_below_the_true_count(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> None:
    counter = TokenCounter.for_model("mistral-small-latest")
    true = true_count(messages, tools)
    assert true <= counter._estimate_chat(messages, tools) <= 3 * true + 64


def test_openai_style_tool_call_ids_fall_back_conservatively() -> None:
    counter = TokenCounter.for_model("mistral-small-latest")
    count = counter.count_chat(tool_conversation("call_Xy12ab34cd56ef78gh90ij12"), TOOLS)
    assert not count.exact
    assert count.tokens >= true_count(tool_conversation("abcDEF123"), TOOLS)


def test_conversation_ending_with_assistant_falls_back_conservatively() -> None:
    messages = [
        {"role": "user", "content": PROSE},
        {"role": "assistant", "content": "The answer starts like this"},
    ]
    count = TokenCounter.for_model("mistral-small-latest").count_chat(messages)
    prefixed = ChatCompletionRequest(
        messages=[
            UserMessage(content=PROSE),
            AssistantMessage(content="The answer starts like this", prefix=True),
        ]
    )
    tokenizer = TokenCounter.for_model("mistral-small-latest")._tokenizer
    assert not count.exact
    assert count.tokens >= len(tokenizer.encode_chat_completion(prefixed).tokens)


def test_image_parts_on_a_text_tokenizer_are_estimated_high() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    count = TokenCounter.for_model("mistral-small-latest").count_chat(messages)
    assert not count.exact
    # the data URL is not counted as text, the image is counted as a worst-case image
    assert 4160 <= count.tokens < 4300


def test_text_texts_and_fim() -> None:
    counter = TokenCounter.for_model("codestral-latest")
    one = counter.count_text("hello world")
    assert one == TokenCount(2, True)
    assert counter.count_text("") == TokenCount(0, True)
    assert counter.count_texts(["hello world", "hello world"]) == TokenCount(4, True)
    prompt, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))"
    fim = counter.count_fim(prompt, suffix)
    expected = counter._tokenizer.encode_fim(FIMRequest(prompt=prompt, suffix=suffix)).tokens
    assert fim == TokenCount(len(expected), True)
    # <s>[SUFFIX]suffix[PREFIX]prompt: three control tokens around the two texts
    assert fim.tokens == counter.count_text(prompt).tokens + counter.count_text(suffix).tokens + 3
    assert counter.count_fim("x = ", None).tokens == counter.count_text("x = ").tokens + 3


@pytest.mark.parametrize("n", [0, 1, 7, 64, 500])
def test_sample_text_retokenises_to_exactly_n(n: int) -> None:
    counter = TokenCounter.for_model("mistral-small-latest")
    pieces = counter.sample_text(n, seed="prompt-digest")
    assert len(pieces) == n
    assert all(counter.count_text(piece).tokens == 1 for piece in pieces)
    assert counter.count_text("".join(pieces)).tokens == n


def test_sample_text_is_deterministic_per_seed() -> None:
    counter = TokenCounter.for_model("mistral-small-latest")
    assert counter.sample_text(20, "a") == counter.sample_text(20, "a")
    assert counter.sample_text(20, "a") != counter.sample_text(20, "b")


_FRESH: dict[str, Any] = {}


def _reference(family_loader: str) -> Any:
    """A freshly loaded, unmodified mistral-common tokenizer (the gateway speeds up its own)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    if family_loader not in _FRESH:
        _FRESH[family_loader] = {
            "tekken": lambda: MistralTokenizer.v3(is_tekken=True),
            "spm-v7": MistralTokenizer.v7,
        }[family_loader]()
    return _FRESH[family_loader]


_PIECES = [*"ab c\n\t.é漢🙂", "<s>", "[INST]", "</s>", "[/INST]", " the", "\n\n"]
_TEXT = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=40).map("".join)


@st.composite
def _conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_TEXT)})
    for _ in range(draw(st.integers(0, 3))):
        messages.append({"role": "user", "content": draw(_TEXT)})
        messages.append({"role": "assistant", "content": draw(_TEXT)})
    messages.append({"role": "user", "content": draw(_TEXT)})
    return messages


_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize(
    ("model", "loader"), [("mistral-small-latest", "tekken"), ("mistral-large-2411", "spm-v7")]
)
@settings(max_examples=60, deadline=None)
@given(messages=_conversations(), with_tools=st.booleans())
def test_the_fast_count_equals_mistral_commons_full_encode(
    model: str, loader: str, messages: list[dict[str, Any]], with_tools: bool
) -> None:
    """The gateway's count (no decode, faster Tekken encode) is mistral-common's exactly."""
    if loader.startswith("spm") and importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("sentencepiece not installed")
    tools = _TOOLS if with_tools else None
    counted = TokenCounter.for_model(model).count_chat(messages, tools)
    request = ChatCompletionRequest.from_openai(messages, tools=tools)
    assert counted.tokens == len(_reference(loader).encode_chat_completion(request).tokens)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 30), st.integers(0, 60)),
        max_size=80,
    )
)
def test_count_cache_stays_within_both_bounds_and_evicts_the_least_recently_used(
    operations: list[tuple[str, int, int]],
) -> None:
    """Against a model: an ordered dict, oldest first, trimmed to 8 entries and 100 units."""
    cache: CountCache[int, int] = CountCache(max_entries=8, max_size=100)
    model: dict[int, int] = {}  # key -> size, least recently used first
    for operation, key, size in operations:
        if operation == "get":
            expected = key * 7 if key in model else None
            assert cache.get(key) == expected
            if key in model:
                model[key] = model.pop(key)
            continue
        cache.put(key, key * 7, size)
        model.pop(key, None)
        model[key] = size
        while len(model) > 8 or sum(model.values()) > 100:
            del model[next(iter(model))]
        assert len(cache) == len(model) <= 8
        assert cache.size == sum(model.values()) <= 100


def test_count_cache_keeps_no_key_bigger_than_its_size_bound() -> None:
    cache: CountCache[str, int] = CountCache(max_entries=8, max_size=100)
    cache.put("small", 1, 10)
    cache.put("huge", 2, 101)
    assert cache.get("huge") is None
    assert cache.get("small") == 1
    assert cache.size == 10
