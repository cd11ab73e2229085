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


def test_bench_cnn_bf16_layouts_keep_what_they_name_in_fp32():
    """The mixed-precision variants of ``bench_cnn.py --bf16-variants`` put the parts they name in
    fp32 (and the rest in bf16), and still encode to mostly fp32's codes."""
    import torch

    from benchmarks import bench_cnn
    from benchmarks.bench_titok import real_photos
    from visualtok import create_model

    torch.manual_seed(0)
    model = create_model("retok_tiny").eval()
    v = bench_cnn.bf16_layouts(model)
    mid = v["bf16, mid + norm_out + conv_out fp32"]
    assert mid.encoder.mid[0].conv1.weight.dtype == torch.float32
    assert mid.encoder.conv_blocks[0].res[0].conv1.weight.dtype == torch.bfloat16
    stream = v["convs (+attention) bf16, fp32 residual stream / GroupNorm / SiLU"]
    assert stream.encoder.conv_in.weight.dtype == torch.bfloat16
    assert stream.encoder.norm_out.weight.dtype == torch.float32
    assert v["bf16 CNN, Q-Former 2D->1D fp32"].s2to1encoder.ln_post.weight.dtype == torch.float32
    x = real_photos(2, 64)
    with torch.no_grad():
        codes = model.encode(x)
        for name, m in v.items():
            assert float((m.encode(x) == codes).float().mean()) > 0.8, name  # measured 0.93-0.98
