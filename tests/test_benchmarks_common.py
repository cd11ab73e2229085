"""The shared benchmark helpers measure what they claim (``benchmarks/_common.py``)."""

from __future__ import annotations

import torch

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


def test_bench_cnn_reference_layout_matches_ours():
    """The official-layout references of benchmarks/bench_cnn.py compute what our models do."""
    from benchmarks import bench_cnn

    rows = bench_cnn.main(["--presets", "vqgan_tiny,retok_tiny", "--size", "64", "--batch", "1",
                           "--repeats", "1"])
    enc = [r for r in rows if r["stage"] == "encode"]
    dec = [r for r in rows if r["stage"] == "decode"]
    assert all(r["ref same codes"] == 1.0 for r in enc)
    assert all(r["ref max |diff|"] < 1e-4 for r in dec)
