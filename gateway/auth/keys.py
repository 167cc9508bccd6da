"""Tenant API keys: the format, its checksum, and the peppered hash we store.

A key looks like `gwk_` + 43 base62 chars (32 bytes from `secrets`, 256 bits) + a 6-char base62
CRC32 of those 43 chars, 53 chars in all (GitHub's token format). The typed prefix makes leaked
keys findable by secret scanners; the checksum rejects typos and garbage without a lookup, so
junk never reaches the cache or the database.

Only `hash_key(key, pepper)`, an HMAC-SHA-256 under a server secret, is stored (plus the
12-char display prefix). A fast hash is right here: the key is 256 random bits, so there is
nothing to brute-force, and the pepper means a leaked table alone can't be matched against
candidate keys. Lookups go by hash through a unique index, so no secret is ever compared in
Python and no constant-time compare is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib

KEY_PREFIX = "gwk_"
BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_BYTES = 32
RANDOM_CHARS = 43  # ceil(256 / log2(62))
CHECKSUM_CHARS = 6  # 62**6 > 2**32
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_CHARS + CHECKSUM_CHARS
DISPLAY_PREFIX_CHARS = 12

_SHAPE = re.compile(rf"{KEY_PREFIX}[0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS}}}", flags=re.ASCII)
_BODY_START = len(KEY_PREFIX)
_BODY_END = _BODY_START + RANDOM_CHARS


def _base62(value: int, width: int) -> str:
    digits: list[str] = []
    rest = value
    while rest:
        rest, digit = divmod(rest, 62)
        digits.append(BASE62_ALPHABET[digit])
    if len(digits) > width:
        raise ValueError(f"{value} does not fit in {width} base62 digits")
    return "".join(reversed(digits)).rjust(width, BASE62_ALPHABET[0])


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_CHARS)


def generate_key() -> str:
    """A new tenant key: `gwk_` + 256 random bits in base62 + a CRC32 checksum."""
    body = _base62(int.from_bytes(secrets.token_bytes(RANDOM_BYTES), "big"), RANDOM_CHARS)
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def has_key_shape(key: str) -> bool:
    """Prefix, length and alphabet are right (no checksum); cheap, never raises."""
    return len(key) == KEY_LENGTH and _SHAPE.fullmatch(key) is not None


def is_well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum are right; cheap, never raises."""
    return has_key_shape(key) and _checksum(key[_BODY_START:_BODY_END]) == key[_BODY_END:]


_KEYED: dict[bytes, hmac.HMAC] = {}  # pepper -> HMAC already keyed with it (one per process)


def hash_key(key: str, pepper: bytes) -> str:
    """The stored form of a key: hex HMAC-SHA-256 under the server pepper."""
    # Copying an HMAC already keyed with the pepper skips OpenSSL's per-call key set-up and
    # digest lookup: 6 us instead of 10 for the one-shot hmac.digest, on every request.
    keyed = _KEYED.get(pepper)
    if keyed is None:
        keyed = _KEYED[pepper] = hmac.new(pepper, digestmod=hashlib.sha256)
    digest = keyed.copy()
    digest.update(key.encode("utf-8"))
    return digest.hexdigest()


def display_prefix(key: str) -> str:
    """The part of a key that is safe to show and store, e.g. `gwk_AbC12345`."""
    return key[:DISPLAY_PREFIX_CHARS]


def parse_bearer(header_value: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not header_value:
        return None
    parts = header_value.split(None, 1)  # any whitespace run separates scheme and token
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None
