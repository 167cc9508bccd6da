"""Residency policy: parsing, and a request header that may only ever narrow the tenant's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.routing.residency import ANYWHERE, RESIDENCY_HEADER, ResidencyPolicy
from tests.unit.test_routing_support import JURISDICTIONS


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("any", None),
        (" ANY ", None),
        ("eu", {"eu"}),
        ("EU", {"eu"}),
        ("eu,ch", {"eu", "ch"}),
        (" eu , ch ", {"eu", "ch"}),
        ("eu,eu", {"eu"}),
    ],
)
def test_parse(text: str, allowed: set[str] | None) -> None:
    policy = ResidencyPolicy.parse(text)
    assert policy.allowed == (None if allowed is None else frozenset(allowed))


@pytest.mark.parametrize("text", ["", " ", ",", "eu,", ",eu", "eu,,ch", "any,eu", "eu, any"])
def test_parse_refuses_bad_values(text: str) -> None:
    with pytest.raises(ValueError, match="not a residency policy"):
        ResidencyPolicy.parse(text)


def test_admits_and_label() -> None:
    eu_ch = ResidencyPolicy.parse("ch,eu")
    assert eu_ch.admits("eu")
    assert eu_ch.admits("ch")
    assert not eu_ch.admits("us")
    assert eu_ch.label == "ch,eu"
    assert ANYWHERE.admits("anything")
    assert ANYWHERE.label == "any"


@pytest.mark.parametrize(
    ("tenant", "header", "expected"),
    [
        ("any", None, "any"),
        ("any", "any", "any"),
        ("any", "eu", "eu"),
        ("eu", None, "eu"),
        ("eu", "any", "eu"),  # `any` in the header does not widen
        ("eu", "EU", "eu"),
        ("eu,ch", "ch", "ch"),
        ("eu,ch", "ch,us", "ch"),  # us is dropped: the tenant never allowed it
    ],
)
def test_header_narrows(tenant: str, header: str | None, expected: str) -> None:
    assert ResidencyPolicy.parse(tenant).narrowed(header).label == expected


def test_disjoint_header_admits_nothing() -> None:
    narrowed = ResidencyPolicy.parse("eu").narrowed("us")
    assert narrowed.allowed == frozenset()
    assert not any(narrowed.admits(j) for j in JURISDICTIONS)


@pytest.mark.parametrize("header", ["", ",", "eu,,ch", "any,eu", "any," + "x" * 500])
def test_bad_header_is_a_400_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ResidencyPolicy.parse("eu").narrowed(header)
    error = caught.value
    assert error.status == 400
    assert error.param == RESIDENCY_HEADER == "x-gateway-residency"
    assert "x" * 65 not in error.message  # the echo of a long header is cut short


tenant_policies = st.one_of(
    st.just(ANYWHERE),
    st.sets(st.sampled_from(JURISDICTIONS), min_size=1).map(ResidencyPolicy),
)
jurisdiction_lists = st.lists(
    st.sampled_from([*JURISDICTIONS, "EU", " us ", "fr"]), min_size=1, max_size=4
).map(",".join)
headers = st.one_of(st.none(), st.just("any"), jurisdiction_lists, st.text(max_size=12))


@settings(max_examples=150, deadline=None)
@given(tenant=tenant_policies, header=headers)
def test_narrowing_never_widens(tenant: ResidencyPolicy, header: str | None) -> None:
    try:
        narrowed = tenant.narrowed(header)
    except InvalidRequest:
        return
    if tenant.allowed is not None:
        assert narrowed.allowed is not None
        assert narrowed.allowed <= tenant.allowed
    for jurisdiction in (*JURISDICTIONS, "fr"):
        assert not narrowed.admits(jurisdiction) or tenant.admits(jurisdiction)
