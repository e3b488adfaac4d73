"""Kubernetes quantities: the edges the mutation run (docs/mutation.md) found untested."""

from __future__ import annotations

from decimal import Decimal

import pytest

from hami.protocol.errors import ProtocolError
from hami.protocol.quantity import MAX_EXPONENT, mib_quantity, parse_quantity


@pytest.mark.parametrize(
    ("value", "expect"), [(1.1, Decimal("1.1")), (0.5, Decimal("0.5")), (2.0, Decimal(2))]
)
def test_floats_are_read_by_their_shortest_repr(value: float, expect: Decimal) -> None:
    # Decimal(1.1) would be 1.100000000000000088817841970012523...
    assert parse_quantity(value) == expect
    assert str(parse_quantity(1.1)) == "1.1"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("1e30", Decimal("1e30")),  # the largest exponent accepted
        ("1e030", Decimal("1e30")),  # leading zeros of the exponent do not count
        ("1e+030", Decimal("1e30")),
        ("1e-030", Decimal("1e-30")),
        ("2e0", Decimal(2)),  # an exponent of zero digits after the zeros
        ("2E000", Decimal(2)),
    ],
)
def test_exponents_up_to_the_bound(text: str, expect: Decimal) -> None:
    assert parse_quantity(text) == expect


@pytest.mark.parametrize("text", ["1e31", "1e-31", "1e40", "1e300", "1e0031"])
def test_exponents_beyond_the_bound(text: str) -> None:
    with pytest.raises(ProtocolError, match=f"exponent beyond ±{MAX_EXPONENT}"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "quantity True is not a number"),
        ([1], "quantity [1] is not a string or number"),
        ("1x", "quantity '1x' is not a valid Kubernetes quantity"),
    ],
)
def test_errors_name_the_value(value: object, message: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_quantity(value)
    assert str(exc.value) == message


def test_long_values_are_cut_short_in_errors() -> None:
    fits = "x" * 62  # repr is 64 characters: shown whole
    with pytest.raises(ProtocolError) as exc:
        parse_quantity(fits)
    assert str(exc.value) == f"quantity {fits!r} is not a valid Kubernetes quantity"
    long = "y" * 62 + "z"  # repr is 65 characters: the first 60, an ellipsis, the last
    with pytest.raises(ProtocolError) as exc:
        parse_quantity(long)
    assert str(exc.value) == f"quantity {repr(long)[:60]}...' is not a valid Kubernetes quantity"


@pytest.mark.parametrize(
    ("mib", "text"),
    [
        (0, "0"),
        (1, "1Mi"),
        (4864, "4864Mi"),
        (19968, "19968Mi"),
        (40960, "40Gi"),
        (1 << 20, "1Ti"),
        (3 << 30, "3Pi"),
    ],
)
def test_mib_quantity_is_kubernetes_canonical_form_and_reads_back(mib: int, text: str) -> None:
    assert mib_quantity(mib) == text
    assert parse_quantity(text) == mib * 2**20


def test_mib_quantity_refuses_a_negative_amount() -> None:
    with pytest.raises(ValueError, match="-1 MiB"):
        mib_quantity(-1)
