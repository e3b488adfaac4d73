"""Live usage from a monitor's /metrics text or a Prometheus answer; odd input never raises."""

from __future__ import annotations

import pytest

from hami.webui.runner import monitor_targets, parse_selector
from hami.webui.usage import LiveUsage, parse_monitor_metrics, parse_prometheus_vector

C = 'zone="vGPU",namespace="team",pod="train",container="main",vdevice_index="0",device_uuid="GPU-a"'
H = 'zone="vGPU",node="n1",device_index="0",device_uuid="GPU-a",device_type="NVIDIA A100"'
TEXT = f"""# HELP hami_vgpu_memory_used_bytes bytes
# TYPE hami_vgpu_memory_used_bytes gauge
hami_vgpu_memory_used_bytes{{{C}}} 3.145728e+09
# TYPE hami_container_device_utilization_ratio gauge
hami_container_device_utilization_ratio{{{C}}} 25.0
# TYPE hami_host_gpu_memory_used_bytes gauge
hami_host_gpu_memory_used_bytes{{{H}}} 4.0e+09
# TYPE hami_host_gpu_utilization_ratio gauge
hami_host_gpu_utilization_ratio{{{H}}} 40
# TYPE hami_vgpu_memory_used_bytes_extra gauge
hami_vgpu_memory_used_bytes_extra{{{C}}} 1
# TYPE hami_vgpu_memory_limit_bytes gauge
hami_vgpu_memory_limit_bytes{{{C}}} NaN
"""


def test_monitor_text_gives_container_and_card_usage() -> None:
    u = parse_monitor_metrics(TEXT, "http://m/metrics")
    c = u.container("team", "train", "main", "GPU-a")
    assert c is not None and (c.memory_bytes, c.util_percent) == (3145728000, 25.0)
    assert (u.cards["GPU-a"].memory_bytes, u.cards["GPU-a"].util_percent) == (4_000_000_000, 40.0)
    assert u.pod_memory("team", "train") == 3145728000 and u.pod_memory("team", "other") is None
    assert u.sources == ["http://m/metrics"] and u.errors == {}


def test_samples_without_their_labels_or_a_number_are_skipped() -> None:
    text = (
        'hami_vgpu_memory_used_bytes{namespace="team",pod="p"} 5\n'
        'hami_vgpu_memory_used_bytes{namespace="t",pod="p",container="c",device_uuid="G"} NaN\n'
        'hami_host_gpu_memory_used_bytes{node="n"} 7\n'
    )
    u = parse_monitor_metrics(text, "m")
    assert u.containers == {} and u.cards == {} and u.errors == {}


def test_text_that_is_not_exposition_format_is_an_error_not_an_exception() -> None:
    u = parse_monitor_metrics("<html>oops {</html>", "http://m/metrics")
    assert u.containers == {} and "http://m/metrics: not Prometheus text" in u.errors["http://m/metrics"]


def test_prometheus_answers() -> None:
    ok = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {
                    "metric": {"namespace": "team", "pod": "p", "container": "c", "device_uuid": "G"},
                    "value": [1.0, "1048576"],
                },
                {"metric": "junk", "value": [1]},
            ],
        },
    }
    u = parse_prometheus_vector("hami_vgpu_memory_used_bytes", ok, "http://prom")
    assert u.pod_memory("team", "p") == 1048576
    bad = parse_prometheus_vector(
        "hami_vgpu_memory_used_bytes", {"status": "error", "error": "bad query"}, "P"
    )
    assert list(bad.errors.values()) == ["P: query hami_vgpu_memory_used_bytes failed: bad query"]
    assert parse_prometheus_vector("x", [1, 2], "P").errors


def test_merging_keeps_every_source() -> None:
    a = parse_monitor_metrics(TEXT, "a")
    total = LiveUsage()
    total.merge(a)
    total.merge(parse_monitor_metrics("garbage {", "b"))
    assert total.sources == ["a"] and "b" in total.errors and total.pod_memory("team", "train")


def test_monitor_pods_are_found_by_their_labels() -> None:
    def pod(name: str, labels: dict[str, str], phase: str, ip: str | None) -> dict[str, object]:
        return {"metadata": {"name": name, "labels": labels}, "status": {"phase": phase, "podIP": ip}}

    sel = parse_selector("app=mon, part=x")
    pods = [
        pod("a", {"app": "mon", "part": "x"}, "Running", "10.0.0.2"),
        pod("b", {"app": "mon", "part": "x"}, "Pending", "10.0.0.3"),
        pod("c", {"app": "mon"}, "Running", "10.0.0.4"),
        pod("d", {"app": "mon", "part": "x"}, "Running", "fd00::5"),
        pod("e", {"app": "mon", "part": "x"}, "Running", None),
    ]
    assert monitor_targets(pods, sel, 9394) == [
        "http://10.0.0.2:9394/metrics",
        "http://[fd00::5]:9394/metrics",
    ]


@pytest.mark.parametrize("text", ["", "app", "=x", "a==b"])
def test_bad_selectors_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="monitor selector"):
        parse_selector(text)


def test_a_card_without_host_figures_sums_its_containers() -> None:
    text = "\n".join(
        f'hami_vgpu_memory_used_bytes{{namespace="t",pod="{p}",container="c",device_uuid="G"}} {v}'
        for p, v in (("a", 100), ("b", 50))
    )
    u = parse_monitor_metrics(text, "m")
    card = u.card("G")
    assert card is not None and card.memory_bytes == 150
    assert u.card("other") is None
    host = parse_monitor_metrics(TEXT, "n")
    assert host.card("GPU-a") is host.cards["GPU-a"]  # the driver's figure wins
