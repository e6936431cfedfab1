"""Device resolution and precision contexts (generalad/devices.py), with CUDA faked where the machine has none."""

from __future__ import annotations

import pytest
import torch

from generalad import devices
from generalad.devices import autocast, check_precision, device_label, grad_scaler, resolve_device
from generalad.errors import ConfigError


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this process sees `n` CUDA devices, the current one being cuda:0."""

    def fake(n: int) -> None:
        monkeypatch.setattr(devices, "cuda_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    return fake


def test_auto_is_cpu_without_cuda(fake_gpus) -> None:
    fake_gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_auto_is_the_current_cuda_device_when_one_is_visible(fake_gpus) -> None:
    fake_gpus(2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_refused_clearly_where_there_is_none(fake_gpus) -> None:
    fake_gpus(0)
    with pytest.raises(ConfigError, match="has none"):
        resolve_device("cuda")
    fake_gpus(2)
    with pytest.raises(ConfigError, match=r"2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("gpu0")


def test_fp16_needs_cuda_and_unknown_precisions_are_refused() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision must be one of"):
        check_precision("int8", torch.device("cpu"))
    assert grad_scaler(torch.device("cpu"), "bf16") is None


def test_bf16_autocast_runs_matmuls_in_bf16_on_cpu_and_fp32_stays_fp32() -> None:
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    for precision in ("fp32", "tf32"):  # tf32 is fp32 exactly on a CPU
        with autocast(cpu, precision):
            out = layer(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


def test_report_label_names_a_non_default_precision() -> None:
    assert device_label(torch.device("cuda", 1)) == "cuda:1"
    assert device_label(torch.device("cpu"), "bf16") == "cpu/bf16"
