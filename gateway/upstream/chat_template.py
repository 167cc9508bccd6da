"""Plain-text chats rendered the way mistral-common's instruct tokenizers render them.

`tokenizer.py` counts prompt tokens with mistral-common, whose request validation,
normalisation and pydantic models cost several times the BPE itself. For the common shape (no
tools; system, developer, user and assistant messages whose content is a string or a list of
text parts; assistant messages without tool calls or reasoning) this module reproduces, from the
mistral-common 1.13 source, which strings the tokenizer encodes and how many template tokens
surround them. Counting then costs one BPE call per turn.

Rules reproduced (validation mode `test`, tokenizer versions v1, v2, v3 and v7):
- validator.py: a conversation is not empty; a single message is not an assistant's; with more
  than one message the last is not an assistant's (no `prefix` comes from OpenAI dicts); a
  system message never follows an assistant one; before v7 (validator V5) every assistant
  message has content.
- normalize.py: consecutive messages of one role merge, their non-empty texts (and text parts)
  joined with "\\n\\n"; a system message ends a run. Up to v3 system prompts leave the turns,
  are joined with "\\n\\n" and a leading empty user turn is added when the first turn is not a
  user's; v7 keeps each system message in place.
- instruct.py: an assistant turn with no text is refused; BOS, then per user turn `[INST] text [/INST]` (v1: as plain text, with the system
  prompt before the first user turn; v2/v3: control tokens, system prompt before the last user
  turn), per assistant turn its text (v2+: right-stripped of spaces) plus EOS, per v7 system
  message `[SYSTEM_PROMPT] text [/SYSTEM_PROMPT]`.

Invariant: `render_chat` returns None for anything else, including every conversation
mistral-common refuses, so the caller's slow path (and its fallback estimate) stays the one
place those are decided. A property test holds the two paths equal for every tokenizer family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mistral_common
from mistral_common.protocol.instruct.normalize import (
    InstructRequestNormalizer,
    InstructRequestNormalizerV7,
)
from mistral_common.protocol.instruct.validator import (
    MistralRequestValidator,
    MistralRequestValidatorV3,
    MistralRequestValidatorV5,
    ValidationMode,
)
from mistral_common.tokens.tokenizers.instruct import (
    InstructTokenizerV1,
    InstructTokenizerV2,
    InstructTokenizerV3,
    InstructTokenizerV7,
)
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

_SYSTEM, _USER, _ASSISTANT = 0, 1, 2
_ROLES = {"system": _SYSTEM, "developer": _SYSTEM, "user": _USER, "assistant": _ASSISTANT}
_JOIN = "\n\n"  # normalize.py `_DEFAULT_JOIN_STR`, for messages and text parts alike (< v15)


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """How one instruct tokenizer version lays out a plain-text chat."""

    system_in_place: bool  # v7: [SYSTEM_PROMPT] messages where they stand
    system_before_first_user: bool  # v1 (else: before the last user turn)
    inst_as_text: bool  # v1 encodes "[INST] … [/INST]" as text, not control tokens
    strip_assistant: bool  # v2+ encode `content.rstrip(" ")`
    assistant_needs_content: bool  # validators before V5 refuse one without content


_V1 = ChatTemplate(False, True, True, False, True)
_V2_V3 = ChatTemplate(False, False, False, True, True)
_V7 = ChatTemplate(True, False, False, True, False)

# The release and the exact classes whose source the rules above were read from; another
# release, a subclass or another version (v11+, a model-settings builder) keeps the slow path.
_READ_FROM = "1.13."
_TEMPLATES: dict[tuple[type, type, type], ChatTemplate] = {
    (InstructTokenizerV1, InstructRequestNormalizer, MistralRequestValidator): _V1,
    (InstructTokenizerV2, InstructRequestNormalizer, MistralRequestValidator): _V2_V3,
    (InstructTokenizerV3, InstructRequestNormalizer, MistralRequestValidatorV3): _V2_V3,
    (InstructTokenizerV7, InstructRequestNormalizerV7, MistralRequestValidatorV5): _V7,
}


# What the tokenizer encodes: (template tokens, texts), one BPE call per text. A plain tuple:
# it is the LRU cache's key, built on every request (a NamedTuple costs a microsecond more).
RenderedChat = tuple[int, tuple[str, ...]]


def template_for(tokenizer: MistralTokenizer) -> ChatTemplate | None:
    """The chat template of a loaded tokenizer, or None when only mistral-common may render it."""
    if not mistral_common.__version__.startswith(_READ_FROM):
        return None
    validator = tokenizer._chat_completion_request_validator
    if validator.mode != ValidationMode.test:  # serving mode, for one, wants a model name
        return None
    if getattr(tokenizer.instruct_tokenizer.tokenizer, "model_settings_builder", None):
        return None
    key = (
        type(tokenizer.instruct_tokenizer),
        type(tokenizer._instruct_request_normalizer),
        type(validator),
    )
    return _TEMPLATES.get(key)


def render_chat(messages: Any, tools: Any, template: ChatTemplate) -> RenderedChat | None:
    """The texts and template tokens mistral-common would encode, or None (use mistral-common)."""
    if type(messages) is not list or not messages:
        return None
    if tools is not None and (type(tools) is not list or tools):  # `tools=[]` means none
        return None
    turns: list[tuple[int, str]] = []  # normalize.py's merged turns: (role, text)
    system_parts: list[str] = []
    previous = -1
    for message in messages:
        parsed = _parse(message, template)
        if parsed is None:
            return None
        role, text, truthy = parsed
        if role == _SYSTEM:
            if previous == _ASSISTANT:  # the validator's role order
                return None
            if template.system_in_place:
                turns.append((role, text))
            elif truthy:  # a system message with empty content adds nothing
                system_parts.append(text)
        elif role == previous:  # same role, no system message between: one turn
            merged = turns[-1][1]
            turns[-1] = (role, f"{merged}{_JOIN}{text}" if merged and text else merged or text)
        else:
            turns.append((role, text))
        previous = role
    if previous == _ASSISTANT:  # the last message (or the only one) is the assistant's
        return None
    if not turns or (not template.system_in_place and turns[0][0] != _USER):
        turns.insert(0, (_USER, ""))
    return _layout(turns, _JOIN.join(system_parts) if system_parts else None, template)


def _parse(message: Any, template: ChatTemplate) -> tuple[int, str, bool] | None:
    """(role, text, content truthy?) of one OpenAI message dict, or None.

    The text joins the non-empty text parts with "\\n\\n", as the normaliser does; joining
    such texts again (skipping empty ones) gives what merging whole messages gives."""
    if type(message) is not dict:
        return None
    role = message.get("role")
    if type(role) is not str or (kind := _ROLES.get(role)) is None:
        return None
    content = message.get("content")
    if kind == _ASSISTANT:
        if (
            message.get("tool_calls") is not None
            or message.get("reasoning") is not None
            or message.get("reasoning_content") is not None
            or (template.assistant_needs_content and not content)
        ):
            return None
        if content is None:  # v7: no text here; the merged turn must have some
            return kind, "", False
    if type(content) is str:
        return kind, content, bool(content)
    if type(content) is not list:
        return None
    pieces = []
    for part in content:
        if type(part) is not dict or part.get("type") != "text":
            return None
        text = part.get("text")
        if type(text) is not str:
            return None
        if text:
            pieces.append(text)
    return kind, _JOIN.join(pieces), bool(content)


def _layout(
    turns: list[tuple[int, str]], system_prompt: str | None, template: ChatTemplate
) -> RenderedChat | None:
    """instruct.py: the strings each turn encodes, and the control tokens around them."""
    prompt_at = -1
    if system_prompt:  # an empty system prompt is dropped; there is always a user turn
        step = 1 if template.system_before_first_user else -1
        prompt_at = 0 if step == 1 else len(turns) - 1
        while turns[prompt_at][0] != _USER:
            prompt_at += step
    template_tokens = 1  # BOS
    texts = []
    for index, (role, text) in enumerate(turns):
        if role == _USER:
            if index == prompt_at:
                text = f"{system_prompt}{_JOIN}{text}"
            if template.inst_as_text:
                text = f"[INST] {text} [/INST]"
            else:
                template_tokens += 2  # [INST] [/INST]
        elif role == _ASSISTANT:
            if not text:  # instruct.py raises on an assistant turn without text
                return None
            template_tokens += 1  # EOS
            if template.strip_assistant:
                text = text.rstrip(" ")
        else:
            template_tokens += 2  # [SYSTEM_PROMPT] [/SYSTEM_PROMPT]
        texts.append(text)
    return template_tokens, tuple(texts)
