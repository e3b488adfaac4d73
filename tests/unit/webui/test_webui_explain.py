"""The web UI's explanations come from the scheduling core, read-only: pending reasons grouped per
node group, and what still fits placed with the core's own fit on scratch copies."""

from __future__ import annotations

import dataclasses

from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.testing import webuiseed as w
from hami.webui.explain import (
    COMMON_SIZES,
    ExplainCache,
    FitCounter,
    explain_pending,
    fragmentation,
    group_reasons,
    plain_words,
    request_shape,
)


def _two_card_node() -> w.LedgerSync:
    cards = w.cards_of("n1", 2, mem=16384)
    held = w.running_pod("held", "team", "n1", [ContainerDevice(cards[0].id, "NVIDIA", 8000, 30)])
    return w.ledger([w.node("n1", cards)], [held])


def test_fragmentation_counts_what_the_core_would_place() -> None:
    sync = _two_card_node()
    before = {
        uuid: (c.used, c.usedmem, c.usedcores) for uuid, c in sync.scheduler.state.nodes["n1"].by_uuid.items()
    }
    full, mid, small = fragmentation(sync.scheduler)
    assert [f.size for f in (full, mid, small)] == list(COMMON_SIZES)
    # a whole card: only the free one
    assert (full.pods, full.cards) == (1, 1)
    # 8000 MiB / 30 %: two on the free card (memory), one beside the held slice (8384 MiB left)
    assert (mid.pods, mid.cards) == (3, 2)
    # 4000 MiB / 10 %: four on the free card, two beside the held slice
    assert (small.pods, small.cards) == (6, 2)
    # nothing was placed for real
    after = {
        uuid: (c.used, c.usedmem, c.usedcores) for uuid, c in sync.scheduler.state.nodes["n1"].by_uuid.items()
    }
    assert after == before and list(sync.scheduler.state.pods) == ["uid-team-held"]


def test_fragmentation_skips_cordoned_and_unhealthy_cards() -> None:
    cards = w.cards_of("n1", 3, mem=16384)
    cards[1] = dataclasses.replace(cards[1], health=False)
    node = w.node("n1", cards)
    node["metadata"]["annotations"][keys.DEVICE_CORDON] = cards[0].id
    sync = w.ledger([node], [])
    full = fragmentation(sync.scheduler, COMMON_SIZES[:1], FitCounter(sync.scheduler))[0]
    assert (full.pods, full.cards) == (1, 1)  # only the third card


def test_pending_reasons_are_the_cores_grouped_per_node_group() -> None:
    nodes = [w.node(f"n{i}", w.cards_of(f"n{i}", 2, mem=16384)) for i in range(3)]
    nodes.append(w.node("n3", w.cards_of("n3", 1, mem=16384)))
    held = [
        w.running_pod(f"held{i}", "team", f"n{i}", [ContainerDevice(f"GPU-n{i}-0", "NVIDIA", 16000, 10)])
        for i in range(3)
    ]
    sync = w.ledger(nodes, held)
    pending = w.pending_pod("big", "team", gpus=2, mem=10000)
    explained = explain_pending(sync.scheduler, pending)
    assert explained.fits_on is None and not explained.invalid
    busy, small = explained.groups
    assert busy.nodes == ("n0", "n1", "n2") and small.nodes == ("n3",)
    assert "CardInsufficientMemory" in busy.reason
    assert "not enough free memory on the card for the asked amount" in busy.meaning
    assert explained.summary.startswith("0/4 nodes are available: 3 nodes (n0, n1, n2): ")
    # a pod that fits: the core says so instead of inventing a reason
    assert explain_pending(sync.scheduler, w.pending_pod("one", "team", gpus=1, mem=1000)).fits_on
    assert "uid-team-big" not in sync.scheduler.state.pods  # nothing reserved


def test_type_mismatch_and_invalid_requests_are_explained() -> None:
    sync = w.ledger([w.node("n0", w.cards_of("n0", 1))], [])
    mismatch = explain_pending(sync.scheduler, w.pending_pod("p", "team", gputype="A100"))
    assert [g.reason for g in mismatch.groups] == ["1/1 CardTypeMismatch"]
    too_big = explain_pending(sync.scheduler, w.pending_pod("q", "team", mem=10**6))
    assert too_big.invalid and too_big.groups == ()


def test_group_reasons_orders_by_group_size_then_reason() -> None:
    groups = group_reasons({"b": "X", "a": "X", "c": "Y"})
    assert [(g.reason, g.nodes) for g in groups] == [("X", ("a", "b")), ("Y", ("c",))]
    assert plain_words("2/2 CardTypeMismatch, 1/2 CardNotHealth")[0].startswith("the card is reported")


def test_explanations_are_reused_per_shape_until_the_cluster_changes() -> None:
    sync = w.ledger([w.node("n0", w.cards_of("n0", 1))], [])
    domains = ("hami.io/", "nvidia.com/")
    a, b = w.pending_pod("a", "team", gputype="A100"), w.pending_pod("b", "team", gputype="A100")
    assert request_shape(a, domains) == request_shape(b, domains)
    assert request_shape(a, domains) != request_shape(w.pending_pod("c", "other", gputype="A100"), domains)
    cache = ExplainCache(limit=1)
    cache.begin(1)
    first = cache.explain(sync.scheduler, a, request_shape(a, domains))
    assert first is not None and cache.explain(sync.scheduler, b, request_shape(b, domains)) is first
    other = w.pending_pod("d", "team", gpus=2)
    assert cache.explain(sync.scheduler, other, request_shape(other, domains)) is None  # over the limit
    cache.begin(2)  # the cluster changed
    assert cache.explain(sync.scheduler, other, request_shape(other, domains)) is not None
