"""Device-specific choices made on the CPU: the autocast dtype, device
synchronization and allocator reads (the compile helper is tested in test_compile_and_fp16.py).
CUDA and MPS are stood in for by monkeypatching the torch calls that would answer there."""

from __future__ import annotations

import importlib

import pytest
import torch

from lmlab import attention_cost, device
from lmlab.device import autocast_dtype, native_bf16

CUDA = torch.device("cuda")


@pytest.mark.parametrize(("capability", "expected"), [
    ((6, 0), torch.float16),  # P100
    ((7, 0), torch.float16),  # V100: bf16 only emulated
    ((7, 5), torch.float16),  # T4: bf16 only emulated
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4 / RTX 40xx
    ((9, 0), torch.bfloat16),  # H100 / H200
])
def test_auto_dtype_is_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    # torch.cuda.is_bf16_supported() says True on a T4 (emulation counts): it must not decide
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert native_bf16(CUDA) == (expected == torch.bfloat16)
    assert autocast_dtype(CUDA, "auto") == expected


def test_auto_dtype_off_cuda_and_explicit_choices():
    for name in ("cpu", "mps"):
        assert autocast_dtype(torch.device(name), "auto") is None
        assert not native_bf16(torch.device(name))
    assert autocast_dtype(torch.device("cpu"), "float16") == torch.float16
    assert autocast_dtype(CUDA, "float32") is None
    assert autocast_dtype(CUDA, "bfloat16") == torch.bfloat16


def _record(monkeypatch, module, name, calls, value=None):
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((name, a)) or value)


def test_synchronize_waits_on_each_device_its_own_way(monkeypatch):
    calls = []
    _record(monkeypatch, torch.cuda, "synchronize", calls)
    _record(monkeypatch, torch.mps, "synchronize", calls)
    device.synchronize("cpu")
    assert calls == []
    device.synchronize("cuda:1")
    assert calls == [("synchronize", (torch.device("cuda:1"),))]
    calls.clear()
    device.synchronize(torch.device("mps"))
    assert calls == [("synchronize", ())]


def test_memory_is_read_from_each_devices_allocator(monkeypatch):
    calls = []
    _record(monkeypatch, torch.cuda, "memory_allocated", calls, 100)
    _record(monkeypatch, torch.cuda, "max_memory_allocated", calls, 300)
    _record(monkeypatch, torch.cuda, "reset_peak_memory_stats", calls)
    _record(monkeypatch, torch.mps, "driver_allocated_memory", calls, 700)
    _record(monkeypatch, torch.mps, "empty_cache", calls)
    assert device.allocator_bytes("cpu") is None and device.peak_allocator_bytes("cpu") is None
    assert (device.allocator_bytes(CUDA), device.peak_allocator_bytes(CUDA)) == (100, 300)
    device.reset_peak_memory(CUDA)
    assert calls[-1][0] == "reset_peak_memory_stats"
    assert (device.allocator_bytes("mps"), device.peak_allocator_bytes("mps")) == (700, 700)
    device.reset_peak_memory("mps")
    assert calls[-1][0] == "empty_cache"


def test_timing_code_synchronizes_before_every_clock_read(monkeypatch):
    """attention_cost.measure and generate.timed_generation go through device.synchronize (which
    knows MPS), once after the warm-up and once per timed repeat."""
    seen = []
    monkeypatch.setattr(attention_cost, "synchronize", lambda d: seen.append(torch.device(d)))
    monkeypatch.setattr(attention_cost, "_cpu_allocations", lambda fn: (0, 0))  # no profiler
    attention_cost.measure("sdpa", 8, repeats=3)
    assert seen == [torch.device("cpu")] * 4
    seen.clear()
    generate = importlib.import_module("lmlab.generate")  # the module, not lmlab.generate()
    monkeypatch.setattr(generate, "synchronize", lambda d: seen.append(torch.device(d)))
    from lmlab import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, d_model=8))
    generate.timed_generation(model, torch.zeros(1, 2, dtype=torch.long), 3, use_cache=True,
                              repeats=2)
    assert seen == [torch.device("cpu")] * 2


def test_generator_device():
    assert device.generator_device(None) == torch.device("cpu")
    assert device.generator_device(torch.Generator()) == torch.device("cpu")


def test_profile_reads_environment(monkeypatch):
    monkeypatch.setenv("LMLAB_PROFILE", "ci")
    assert device.profile() == "ci"
    monkeypatch.setenv("LMLAB_PROFILE", "laptop")
    with pytest.raises(ValueError, match="ci, cpu, gpu"):
        device.profile()
    monkeypatch.delenv("LMLAB_PROFILE")
    assert device.profile() == ("gpu" if torch.cuda.is_available() else "cpu")
