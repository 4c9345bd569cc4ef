"""Small pure pieces of the process kubelet: quantities, IP picking, log tails, node objects, back-off."""

from __future__ import annotations

from decimal import Decimal

import pytest
from llmtrain_testbed.kubelet.ipam import pick_free
from llmtrain_testbed.kubelet.logs_server import tail_lines
from llmtrain_testbed.kubelet.nodes import NodeConfig, node_object, node_status
from llmtrain_testbed.kubelet.pods import backoff_delay
from llmtrain_testbed.kubelet.quantity import parse_quantity


def test_quantities_parse_binary_and_decimal_suffixes():
    assert parse_quantity("250m") == Decimal("0.25")
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(8) == 8


def test_a_bad_quantity_is_named():
    with pytest.raises(ValueError, match="'12parsecs'"):
        parse_quantity("12parsecs")


def test_ip_picking_skips_the_bridge_address_and_taken_ones_round_robin():
    assert pick_free(set(), after=1) == 2
    assert pick_free({2, 3}, after=1) == 4
    assert pick_free({4}, after=3, size=8) == 5
    assert pick_free(set(), after=6, size=8) == 2  # wraps (offsets 0, 1 and 7 are never used)
    assert pick_free({2, 3, 4, 5, 6}, after=2, size=8) is None


def test_tail_lines_keeps_the_last_lines():
    assert tail_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail_lines(b"a\nb", 5) == b"a\nb"
    assert tail_lines(b"a\n", 0) == b""


def test_nodes_declare_gpu_capacity_labels_ready_and_distinct_kubelet_ports():
    cfg = NodeConfig(gpus=8, gpu_product="NVIDIA-H200")
    node = node_object(1, cfg)
    status = node_status(1, cfg, "2030-01-01T00:00:00Z")
    assert node["metadata"]["name"] == "llmtrain-node-1"
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert status["capacity"]["nvidia.com/gpu"] == "8" == status["allocatable"]["nvidia.com/gpu"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10251
    assert status["addresses"] == [{"type": "InternalIP", "address": "10.88.0.1"}]


def test_crash_loop_back_off_doubles_and_is_capped_at_ten_seconds():
    assert [backoff_delay(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
