"""Authentication: tenant key format and hashing (`keys`), key → tenant (`principal`)."""

from gateway.auth.keys import (
    display_prefix,
    generate_key,
    has_key_shape,
    hash_key,
    is_well_formed,
    parse_bearer,
)
from gateway.auth.principal import Authenticator, Principal

__all__ = [
    "Authenticator",
    "Principal",
    "display_prefix",
    "generate_key",
    "has_key_shape",
    "hash_key",
    "is_well_formed",
    "parse_bearer",
]
