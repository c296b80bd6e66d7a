"""benchmarks/gpu_check.py where no GPU is: it says so and exits 0, and its MFU peak table picks
the right entry for a device name (`make gpu-check` runs on CPU to its message)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_0(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--json", str(tmp_path / "out.json")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()  # nothing measured, nothing written


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
    ("NVIDIA A10G", 125e12), ("Tesla T4", 65e12), ("Some Future GPU", None),
])
def test_peak_flops_matches_the_device_name(gpu_check, name, peak):
    assert gpu_check.peak_flops(name)[0] == peak


def test_it_reads_the_quickstarts_gpu_profile(gpu_check, repo_root):
    """The check trains what the quickstart's gpu profile trains: if the notebook's SIZES table
    changes shape, this fails here instead of on a borrowed GPU."""
    sizes = gpu_check.notebook_sizes(repo_root / "notebooks" / "00_quickstart.ipynb", "gpu")
    needed = {"n_layer", "n_head", "d_model", "block_size", "batch_size", "steps", "lr",
              "warmup", "eval_every", "dropout"}
    assert needed <= set(sizes), needed - set(sizes)
    assert sizes["d_model"] % sizes["n_head"] == 0 and sizes["steps"] >= sizes["eval_every"]
    with pytest.raises(ValueError, match="no SIZES"):
        gpu_check.notebook_sizes(repo_root / "notebooks" / "00_quickstart.ipynb", "tpu")
