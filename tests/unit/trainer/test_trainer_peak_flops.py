"""MFU's denominator: each GPU's dense bf16 peak, told apart by the name torch.cuda.get_device_name() reports."""

from __future__ import annotations

import pytest
from llmtrain_trainer.metrics import peak_flops


@pytest.mark.parametrize(
    ("device_name", "tflops"),
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H800", 989),
        ("NVIDIA H800 PCIe", 756),
        ("NVIDIA H20", 148),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L40", 181),
        ("NVIDIA L4", 121),
        ("NVIDIA A10", 125),
        ("NVIDIA A10G", 70),
        ("NVIDIA B200", 2250),
        ("AMD Instinct MI300X", 1307),
    ],
)
def test_each_gpu_gets_its_own_dense_bf16_peak(device_name, tflops):
    assert peak_flops(device_name, None) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("device_name", ["NVIDIA H200 NVL", "nvidia h200 nvl"])
def test_the_h200_nvl_card_is_not_taken_for_the_sxm_module(device_name):
    assert peak_flops(device_name, None) == 835e12 != peak_flops("NVIDIA H200", None)


@pytest.mark.parametrize("device_name", ["NVIDIA GeForce RTX 4090", "NVIDIA H2000", "Tesla V100-SXM2-16GB"])
def test_an_unlisted_gpu_has_no_peak_so_no_mfu(device_name):
    assert peak_flops(device_name, None) is None


def test_a_configured_peak_wins_and_cpu_has_none():
    assert peak_flops("NVIDIA H200", 5e14) == 5e14
    assert peak_flops(None, None) is None
