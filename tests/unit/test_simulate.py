"""`hami simulate` end to end through the CLI: JSON shape, running pods as usage, bad manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hami.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["simulate", *args])
    return result.exit_code, result.stdout, result.stderr


def test_example_cluster_json() -> None:
    code, out, err = run(
        "--nodes",
        str(EXAMPLES / "nodes.yaml"),
        "--pods",
        str(EXAMPLES / "pods.yaml"),
        "--config",
        str(EXAMPLES / "device-config.yaml"),
        "--output",
        "json",
        "--now",
        "1700000000",
    )
    assert code == 0, err
    data = json.loads(out)
    placements = {p["pod"]: p for p in data["placements"]}
    assert "research/running-notebook" not in placements  # running pods are usage, not decisions
    inf = placements["serving/llm-inference-1"]
    assert inf["node"] == "gpu-a100" and inf["reason"] is None
    assert inf["annotations"]["hami.io/vgpu-time"] == "1700000000"
    # the running notebook holds GPU-a100-0, so binpack-by-node + spread-by-card picks an idle card:
    # among the equal idle cards the highest index, as HAMi's fit (it walks its sorted list from the end)
    assert inf["annotations"]["hami.io/vgpu-devices-allocated"] == "GPU-a100-3,NVIDIA,16000,30:;"
    t4 = placements["batch/small-t4-job"]
    assert t4["node"] == "gpu-t4"
    assert t4["annotations"]["hami.io/vgpu-devices-to-allocate"] == ";GPU-t4-1,NVIDIA,6000,40:;;"
    too_big = placements["batch/too-big"]
    assert too_big["node"] is None and "nvidia.com/gpumem" in too_big["reason"]
    nodes = {n["name"]: n for n in data["nodes"]}
    a100 = {d["uuid"]: d for d in nodes["gpu-a100"]["devices"]}
    assert a100["GPU-a100-0"]["usedmem"] == 20000 and a100["GPU-a100-0"]["usedcores"] == 50
    assert set(a100["GPU-a100-0"]) == {
        "uuid",
        "type",
        "used",
        "count",
        "usedmem",
        "totalmem",
        "usedcores",
        "totalcores",
    }


def test_table_output_lists_pods_and_cards() -> None:
    code, out, _ = run("--nodes", str(EXAMPLES / "nodes.yaml"), "--pods", str(EXAMPLES / "pods.yaml"))
    assert code == 0
    assert "serving/llm-inference-1" in out and "UNSCHEDULABLE" in out and "GPU-h100-7" in out


def test_each_decision_updates_state(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(
        "kind: Node\napiVersion: v1\nmetadata:\n  name: n1\n  annotations:\n    hami.io/node-nvidia-register: "
        '\'[{"id":"GPU-1","count":10,"devmem":1000,"devcore":100,"type":"NVIDIA-T4","health":true}]\'\n'
    )
    pods = tmp_path / "pods.yaml"
    pod = (
        "kind: Pod\napiVersion: v1\nmetadata: {{name: {n}}}\nspec:\n  containers: [{{name: c, resources: "
        "{{limits: {{nvidia.com/gpu: 1, nvidia.com/gpumem: 600}}}}}}]\n"
    )
    pods.write_text(pod.format(n="p1") + "---\n" + pod.format(n="p2"))
    code, out, err = run("--nodes", str(nodes), "--pods", str(pods), "--output", "json")
    assert code == 0, err
    p1, p2 = json.loads(out)["placements"]
    assert p1["node"] == "n1"
    assert p2["node"] is None and "1/1 CardInsufficientMemory" in p2["reason"]


def test_list_kind_is_accepted(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("kind: List\napiVersion: v1\nitems:\n- kind: Node\n  metadata: {name: n1}\n")
    pods = tmp_path / "pods.yaml"
    pods.write_text("kind: PodList\napiVersion: v1\nitems: []\n")
    code, out, err = run("--nodes", str(nodes), "--pods", str(pods), "--output", "json")
    assert code == 0, err
    assert json.loads(out) == {"placements": [], "nodes": []}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kind: Pod\nmetadata: {name: p}\nspec: {containers: {}}\n", "document 1 (Pod p): spec.containers"),
        ("kind: Pod\nmetadata: {}\nspec: {containers: []}\n", "document 1 (Pod ?): metadata.name"),
        (
            "---\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: c}]}\n---\nkind: Node\nmetadata: {name: x}\n",
            "document 2: kind: expected 'Pod'",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, resources: {limits: [1]}}]}\n",
            "spec.containers[0].resources.limits",
        ),
        (
            "kind: Pod\nmetadata: {name: p, annotations: {a: 1}}\nspec: {containers: [{name: c}]}\n",
            "metadata.annotations",
        ),
        ("kind: [unclosed\n", "invalid YAML"),
    ],
)
def test_malformed_pod_manifest_names_document_and_field(tmp_path: Path, text: str, needle: str) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text(text)
    code, _, err = run("--nodes", str(EXAMPLES / "nodes.yaml"), "--pods", str(pods))
    assert code == 2
    assert needle in err and "pods.yaml" in err


def test_corrupt_node_annotation_marks_only_that_node(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    good = '\'[{"id":"GPU-1","count":10,"devmem":1000,"devcore":100,"type":"T4","health":true}]\''
    nodes.write_text(
        f"kind: Node\nmetadata:\n  name: good\n  annotations:\n    hami.io/node-nvidia-register: {good}\n---\n"
        "kind: Node\nmetadata:\n  name: bad\n  annotations:\n    hami.io/node-nvidia-register: '[{\"id\": 3'\n"
    )
    pods = tmp_path / "pods.yaml"
    pods.write_text(
        "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, resources: {limits: "
        "{nvidia.com/gpu: 1, nvidia.com/gpumem: 10}}}]}\n"
    )
    code, out, err = run("--nodes", str(nodes), "--pods", str(pods), "--output", "json")
    assert code == 0
    assert "node bad" in err and "not valid JSON" in err
    assert json.loads(out)["placements"][0]["node"] == "good"


def test_bad_config_file_exits_with_error(tmp_path: Path) -> None:
    cfg = tmp_path / "device-config.yaml"
    cfg.write_text("nvidia:\n  deviceSplitCount: -1\n")
    code, _, err = run(
        "--nodes", str(EXAMPLES / "nodes.yaml"), "--pods", str(EXAMPLES / "pods.yaml"), "--config", str(cfg)
    )
    assert code == 2
    assert "deviceSplitCount" in err and "-1" in err


MIXED_NODES = """\
apiVersion: v1
kind: Node
metadata:
  name: dcu-node
  annotations:
    hami.io/node-dcu-register: "DCU-0,10,16384,100,DCU-Z100,0,true,0,hami-core:DCU-1,10,16384,100,DCU-Z100,0,true,1,hami-core:"
---
apiVersion: v1
kind: Node
metadata:
  name: gcu-node
status:
  capacity: {enflame.com/gcu: "2"}
  allocatable: {enflame.com/gcu: "2"}
"""

MIXED_PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: dcu-pod, namespace: default}
spec:
  containers:
  - name: c
    image: x
    resources: {limits: {hygon.com/dcunum: 1, hygon.com/dcumem: 2000}}
---
apiVersion: v1
kind: Pod
metadata: {name: gcu-pod, namespace: default}
spec:
  containers:
  - name: c
    image: x
    resources: {limits: {enflame.com/gcu: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: npu-pod, namespace: default}
spec:
  containers:
  - name: c
    image: x
    resources: {limits: {huawei.com/Ascend910B: 1}}
"""


def test_mixed_cluster_places_each_vendor_and_names_what_is_unmanaged(tmp_path: Path) -> None:
    (tmp_path / "nodes.yaml").write_text(MIXED_NODES)
    (tmp_path / "pods.yaml").write_text(MIXED_PODS)
    (tmp_path / "dc.yaml").write_text("hygon: {}\nenflame: {}\nvnpus: {}\n")
    code, out, err = run(
        "--nodes",
        str(tmp_path / "nodes.yaml"),
        "--pods",
        str(tmp_path / "pods.yaml"),
        "--config",
        str(tmp_path / "dc.yaml"),
        "--output",
        "json",
        "--now",
        "1",
    )
    assert code == 0, err
    assert "no backend" not in err  # vnpus: has its Ascend backends (no chip named Ascend910B)
    placements = {p["pod"]: p for p in json.loads(out)["placements"]}
    dcu = placements["default/dcu-pod"]
    assert dcu["node"] == "dcu-node"
    assert dcu["annotations"]["hami.io/dcu-devices-allocated"] == "DCU-1,DCU,2000,100:;"
    gcu = placements["default/gcu-pod"]
    assert gcu["node"] == "gcu-node"
    assert gcu["annotations"]["hami.io/enflame-gcu-devices-allocated"] == "gcu-node-GCU-1,GCU,100,100:;"
    npu = placements["default/npu-pod"]
    assert npu["node"] is None and "huawei.com/Ascend910B" in npu["reason"]
