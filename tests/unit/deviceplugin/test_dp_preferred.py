"""GetPreferredAllocation policy."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hami.deviceplugin.preferred import card_of, preferred_allocation, replica_id


def ids(card: str, n: int) -> list[str]:
    return [replica_id(card, i) for i in range(n)]


def test_card_of() -> None:
    assert card_of("GPU-1234-abcd-7") == "GPU-1234-abcd"
    assert card_of("GPU-1234-abcd") == "GPU-1234-abcd"  # no numeric suffix: the ID itself
    assert card_of("MIG-x-12") == "MIG-x"


def test_distinct_cards_most_free_first() -> None:
    avail = ids("GPU-a", 1) + ids("GPU-b", 3) + ids("GPU-c", 2)
    assert preferred_allocation(avail, [], 2) == ["GPU-b-0", "GPU-c-0"]
    assert preferred_allocation(avail, [], 4) == ["GPU-b-0", "GPU-c-0", "GPU-a-0", "GPU-b-1"]


def test_must_include_and_scheduler_cards() -> None:
    avail = ids("GPU-a", 2) + ids("GPU-b", 2) + ids("GPU-c", 2)
    assert preferred_allocation(avail, ["GPU-a-1"], 2, preferred_cards=["GPU-a", "GPU-c"]) == [
        "GPU-a-1",
        "GPU-c-0",
    ]
    assert preferred_allocation(avail, [], 2, preferred_cards=["GPU-c", "GPU-b"]) == ["GPU-c-0", "GPU-b-0"]


def test_unhealthy_cards_last() -> None:
    avail = ids("GPU-a", 3) + ids("GPU-b", 1)
    assert preferred_allocation(avail, [], 1, unhealthy_cards=frozenset({"GPU-a"})) == ["GPU-b-0"]


@given(
    st.lists(st.sampled_from([replica_id(c, i) for c in "abcd" for i in range(4)]), unique=True, max_size=16),
    st.integers(min_value=0, max_value=20),
    st.lists(st.sampled_from(list("abcd")), max_size=4),
)
def test_properties(avail: list[str], size: int, pref: list[str]) -> None:
    got = preferred_allocation(avail, [], size, preferred_cards=pref)
    assert len(got) == min(size, len(avail))
    assert len(set(got)) == len(got)
    assert set(got) <= set(avail)
    # as many distinct cards as possible
    assert len({card_of(g) for g in got}) == min(len(got), len({card_of(a) for a in avail}))
