"""The fast chat count (chat_template.py) equals mistral-common's, or leaves it to mistral-common."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.upstream.chat_template import template_for
from gateway.upstream.tokenizer import _LOADERS, ModelTokenizer, TokenCount, TokenCounter

FAMILIES = sorted(_LOADERS)
_COUNTERS: dict[str, ModelTokenizer] = {}


def counter(family: str) -> ModelTokenizer:
    """A tokenizer of this family that calls its counts exact (one load per process)."""
    if family.startswith("spm") and importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("sentencepiece not installed")
    if family not in _COUNTERS:
        with TokenCounter._lock:
            tokenizer = TokenCounter._load(family)
        _COUNTERS[family] = ModelTokenizer(f"test-{family}", family, True, tokenizer)
    return _COUNTERS[family]


def slow(family: str, messages: Any, tools: Any = None) -> TokenCount:
    return counter(family)._count_chat_uncached(messages, tools)


# Pieces that stress merging, stripping and the BPE: template-looking text, whitespace only,
# emoji (ZWJ sequences), CJK, combining marks, SentencePiece's own space marker.
_PIECES = [
    *["", " ", "  ", "\n", "\n\n", "\t", " \n ", "a", "b c", " the", "x  "],
    *["é", "e\u0301", "漢字", "🙂", "👨\u200d👩\u200d👧", "\u200b", "ß", "▁", "Ω"],
    *["[INST]", "[/INST]", "</s>", "<s>", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CALLS]"],
]
_TEXT = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=5)), max_size=6).map("".join)
_PART = st.builds(
    lambda text, extra: {"type": "text", "text": text, **extra},
    _TEXT,
    st.sampled_from([{}, {"cache_control": {"type": "ephemeral"}}]),
)
_CONTENT = st.one_of(_TEXT, _TEXT, st.lists(_PART, max_size=3))
_ROLE = st.sampled_from(["system", "developer", "user", "user", "assistant", "assistant"])
_EXTRA = st.sampled_from([{}, {"name": "alice"}, {"prefix": True}, {"tool_calls": None}])


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(_ROLE)
    content = draw(_CONTENT)
    if role == "assistant" and draw(st.integers(0, 5)) == 0:
        content = None  # no text: v7 accepts it when the merged turn has some
    return {"role": role, "content": content, **draw(_EXTRA)}


@st.composite
def plain_chats(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Conversations of the shapes the fast path knows, valid or not for mistral-common."""
    messages = draw(st.lists(_message(), max_size=7))
    if messages and draw(st.integers(0, 3)) > 0:  # mostly end as serving expects
        messages[-1] = {"role": "user", "content": draw(_CONTENT)}
    return messages


def test_every_bundled_family_has_the_fast_path() -> None:
    for family in FAMILIES:
        assert template_for(counter(family)._tokenizer) is not None, family


def test_another_mistral_common_release_keeps_the_slow_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("mistral_common.__version__", "1.14.0")
    assert template_for(counter("tekken-v3")._tokenizer) is None


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=250, deadline=None)
@given(messages=plain_chats(), tools=st.sampled_from([None, []]))
def test_fast_count_equals_the_slow_count(
    family: str, messages: list[dict[str, Any]], tools: list[Any] | None
) -> None:
    """Exact where mistral-common accepts the chat; the slow path (estimate) where it refuses."""
    expected = slow(family, messages, tools)
    fast = counter(family)._count_chat_fast(messages, tools)
    event("accepted" if expected.exact else "refused")  # see --hypothesis-show-statistics
    if expected.exact:
        assert fast == expected
    else:
        assert fast is None
    assert counter(family).count_chat(messages, tools) == expected


EDGE_CHATS: list[list[dict[str, Any]]] = [
    [{"role": "system", "content": "Only a system prompt."}],
    [{"role": "system", "content": ""}],
    [{"role": "system", "content": []}],
    [{"role": "assistant", "content": "hi"}],
    [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "hi"}, {"role": "system", "content": "late system"}],
    [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "s"},
        {"role": "user", "content": "b"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "system", "content": "after an assistant"},
        {"role": "user", "content": "c"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "c"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": "c"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": "c"},
    ],
    [
        {"role": "developer", "content": [{"type": "text", "text": ""}]},
        {
            "role": "system",
            "content": [{"type": "text", "text": "x"}, {"type": "text", "text": ""}],
        },
        {"role": "user", "content": [{"type": "text", "text": "p"}, {"type": "text", "text": "q"}]},
        {"role": "user", "content": ""},
        {"role": "user", "content": "r"},
    ],
    [{"role": "user", "content": "lone surrogate \ud800 here"}],
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("messages", EDGE_CHATS)
def test_edge_shapes_match_the_slow_path(family: str, messages: list[dict[str, Any]]) -> None:
    try:
        expected: TokenCount | type[Exception] = slow(family, messages)
    except Exception as error:  # SentencePiece cannot take a lone surrogate, either path
        expected = type(error)
    fast = counter(family)._count_chat_fast(messages, None)
    if isinstance(expected, TokenCount) and expected.exact:
        assert fast == expected
    else:
        assert fast is None


_TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
_CALL = {"id": "abcDEF123", "type": "function", "function": {"name": "f", "arguments": "{}"}}
UNHANDLED: list[tuple[Any, Any]] = [
    ([{"role": "user", "content": "hi"}], _TOOLS),
    ([{"role": "user", "content": "hi"}], {}),
    ([{"role": "user", "content": "hi"}], 0),
    (({"role": "user", "content": "hi"},), None),
    ([], None),
    (["hi"], None),
    ([{"role": "user"}], None),
    ([{"role": "user", "content": None}], None),
    ([{"role": "user", "content": 7}], None),
    ([{"role": "user", "content": ["hi"]}], None),
    ([{"role": "user", "content": [{"type": "text"}]}], None),
    ([{"role": "user", "content": [{"text": "hi"}]}], None),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], None),
    ([{"role": "function", "content": "hi"}], None),
    ([{"role": ["user"], "content": "hi"}], None),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "r"},
        ],
        None,
    ),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": None, "tool_calls": [_CALL]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "r"},
            {"role": "user", "content": "b"},
        ],
        _TOOLS,
    ),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "tool_calls": []},
            {"role": "user", "content": "c"},
        ],
        None,
    ),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "reasoning_content": "thinking"},
            {"role": "user", "content": "c"},
        ],
        None,
    ),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}]},
            {"role": "user", "content": "c"},
        ],
        None,
    ),
]


@pytest.mark.parametrize(("messages", "tools"), UNHANDLED)
def test_shapes_the_fast_path_does_not_know_take_the_slow_path(
    messages: Any, tools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = counter("tekken-v3")
    assert tokenizer._count_chat_fast(messages, tools) is None
    expected = tokenizer._count_chat_uncached(messages, tools)
    calls: list[Any] = []
    original = tokenizer._count_chat_uncached

    def recording(*args: Any) -> TokenCount:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(tokenizer, "_count_chat_uncached", recording)
    tokenizer._chat_cache.clear()
    assert tokenizer.count_chat(messages, tools) == expected
    assert len(calls) == 1


def test_common_chats_never_reach_mistral_common(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = counter("tekken-v3")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    expected = tokenizer._count_chat_uncached(messages, None)

    def refuse(*args: Any) -> TokenCount:
        raise AssertionError("slow path called")

    monkeypatch.setattr(tokenizer, "_count_chat_uncached", refuse)
    tokenizer._chat_cache.clear()
    assert tokenizer.count_chat(messages) == expected


def test_cache_hits_skip_the_bpe(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = counter("tekken-v3")
    messages = [{"role": "user", "content": "Count me once, please."}]
    first = tokenizer.count_chat(messages)
    monkeypatch.setattr(tokenizer, "_bpe_len", lambda text: pytest.fail("BPE called on a hit"))
    again = [{"role": "user", "content": "Count me once, please."}]  # equal, not identical
    assert tokenizer.count_chat(again) == first


def test_a_growing_conversation_encodes_only_its_new_texts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each turn re-sends the history; only texts not seen before go through the BPE, and the
    count is the one mistral-common gives for the whole conversation. New per turn (v3 puts
    the system prompt before the last user message): the previous question without it, the
    previous answer, the new question with it; never anything older."""
    tokenizer = counter("tekken-v3")
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You answer questions about invoices, briefly."}
    ]
    encoded: list[str] = []
    bpe = tokenizer._bpe_len
    monkeypatch.setattr(tokenizer, "_bpe_len", lambda text: encoded.append(text) or bpe(text))
    for turn in range(4):
        history.append({"role": "user", "content": f"Question {turn}: why is invoice {turn} late?"})
        encoded.clear()
        count = tokenizer.count_chat(history)
        assert count == tokenizer._count_chat_uncached(history, None)
        if turn:
            assert len(encoded) == 3, encoded
            assert all(f"{turn - 1}" in text or f"{turn}" in text for text in encoded), encoded
        history.append(
            {
                "role": "assistant",
                "content": f"Invoice {turn} waits for the approval of the finance team.",
            }
        )
