"""Tenant key format, checksum, hashing and bearer parsing (gateway/auth/keys.py)."""

from __future__ import annotations

import pytest

from gateway.auth.keys import (
    BASE62_ALPHABET,
    KEY_LENGTH,
    display_prefix,
    generate_key,
    has_key_shape,
    hash_key,
    is_well_formed,
    parse_bearer,
)


def test_generated_key_has_the_documented_format() -> None:
    key = generate_key()
    assert key.startswith("gwk_")
    assert len(key) == KEY_LENGTH == 4 + 43 + 6
    assert set(key[4:]) <= set(BASE62_ALPHABET)
    assert is_well_formed(key)


def test_two_keys_never_equal() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000


@pytest.mark.parametrize("position", range(4, KEY_LENGTH))
def test_checksum_rejects_any_one_char_typo(position: int) -> None:
    key = generate_key()
    original = key[position]
    for replacement in ("0", "z", "A"):
        if replacement == original:
            continue
        typo = key[:position] + replacement + key[position + 1 :]
        assert not is_well_formed(typo)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "gwk_",
        "sk-" + "a" * 50,
        "gwk-" + "a" * 49,  # wrong prefix separator
        "GWK_" + "a" * 49,
        "gwk_" + "a" * 48,  # one short
        "gwk_" + "a" * 50,  # one long
        "gwk_" + "a" * 48 + "!",  # outside the alphabet
        "gwk_" + "é" * 49,
        "gwk_" + "a" * 49,  # right shape, wrong checksum
    ],
)
def test_garbage_is_not_well_formed(candidate: str) -> None:
    assert not is_well_formed(candidate)


def test_shape_check_ignores_the_checksum() -> None:
    key = generate_key()
    bad_checksum = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert has_key_shape(key)
    assert has_key_shape(bad_checksum)
    assert not is_well_formed(bad_checksum)
    assert not has_key_shape(key[:-1])
    assert not has_key_shape("sk-" + key[3:])


def test_adjacent_transposition_is_rejected() -> None:
    key = generate_key()
    body = key[4:47]
    swap_at = next(i for i in range(len(body) - 1) if body[i] != body[i + 1])
    swapped = body[:swap_at] + body[swap_at + 1] + body[swap_at] + body[swap_at + 2 :]
    assert not is_well_formed("gwk_" + swapped + key[47:])


def test_hash_is_stable_hex_and_pepper_dependent() -> None:
    key = generate_key()
    first = hash_key(key, b"pepper-1")
    assert first == hash_key(key, b"pepper-1")
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert first != hash_key(key, b"pepper-2")
    assert first != hash_key(key, b"")
    assert first != hash_key(generate_key(), b"pepper-1")


def test_hash_matches_a_known_hmac_vector() -> None:
    # RFC 4231 test case 2: HMAC-SHA-256, key "Jefe".
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert hash_key("what do ya want for nothing?", b"Jefe") == expected


def test_display_prefix_is_the_first_twelve_chars() -> None:
    key = generate_key()
    assert display_prefix(key) == key[:12]
    assert display_prefix(key).startswith("gwk_")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer\tabc", "abc"),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Token abc", None),
        ("Bearerabc", None),
    ],
)
def test_parse_bearer(header: str | None, expected: str | None) -> None:
    assert parse_bearer(header) == expected
