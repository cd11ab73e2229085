"""The shared benchmark helpers measure what they claim (``benchmarks/_common.py``) and the host
overhead script runs."""

from __future__ import annotations

import json

import torch

from benchmarks import quantizer_host_overhead as qho
from benchmarks._common import peak_memory_bytes


def test_cpu_peak_memory_counts_short_lived_tensors_and_reuse():
    n = 512 * 1024  # 2 MiB of fp32

    def two_alive_then_one():
        a = torch.ones(n)
        b = a * 2  # a and b alive: 4 MiB
        del a
        c = b + 1  # reuses a's freed block in the allocator: still 4 MiB live
        return float(c[0])

    def one_at_a_time():
        for _ in range(3):
            torch.ones(n).sum()

    two_alive_then_one()  # warm: the allocator already holds the pages (RSS would not grow)
    peak = peak_memory_bytes(two_alive_then_one)
    assert 4 * 2**20 <= peak < 4.1 * 2**20, peak
    assert 2 * 2**20 <= peak_memory_bytes(one_at_a_time) < 2.1 * 2**20


def test_quantizer_host_overhead_script_runs(tmp_path):
    out = tmp_path / "host.json"
    rows = qho.main(["--only", "FSQ", "--calls", "5", "--json", str(out)])
    assert [r["setting"] for r in rows] == ["FSQ [8,8,8,5,5,5]"]
    r = rows[0]
    assert r["ours train us"] > 0 and r["ref infer us"] > 0
    assert r["train x"] == r["ref train us"] / r["ours train us"]
    assert json.loads(out.read_text())["path"] == "accelerator"
    cfg, make_ref = qho.shrunk("VQ EMA 65536x32")
    assert cfg["codebook_size"] == qho.MAX_CODES and make_ref().codebook_size == qho.MAX_CODES


def test_bench_cnn_reference_layout_matches_ours():
    """The official-layout references of benchmarks/bench_cnn.py compute what our models do."""
    from benchmarks import bench_cnn

    rows = bench_cnn.main(["--presets", "vqgan_tiny,retok_tiny", "--size", "64", "--batch", "1",
                           "--repeats", "1"])
    enc = [r for r in rows if r["stage"] == "encode"]
    dec = [r for r in rows if r["stage"] == "decode"]
    assert all(r["ref same codes"] == 1.0 for r in enc)
    assert all(r["ref max |diff|"] < 1e-4 for r in dec)
