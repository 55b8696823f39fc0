"""bf16 only where the hardware computes it: elsewhere a run asked for bf16 uses fp32, warns and says so."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from unet_ssl.core import runtime as runtime_module
from unet_ssl.core.runtime import make_runtime, native_bf16

CPU_BF16 = {"device": "cpu", "precision": "bf16", "channels_last": False}


def test_bf16_without_native_support_runs_in_fp32_with_a_warning(monkeypatch):
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="no native bf16.*this run uses fp32"):
        assert make_runtime(CPU_BF16).precision == "fp32"
    assert make_runtime(CPU_BF16, emulated_bf16=True).precision == "bf16"  # the numerics experiment's choice


def test_bf16_with_native_support_is_kept_silently(monkeypatch):
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_runtime(CPU_BF16).precision == "bf16"
        assert make_runtime({**CPU_BF16, "precision": "fp32"}).precision == "fp32"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_native_bf16_matches_the_cpu_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
