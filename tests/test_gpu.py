"""CUDA checks (``-m gpu``; skipped without a GPU): the same contracts as on CPU, on the device.

Run on a GPU machine with ``python -m pytest -m gpu -q``.
"""

from __future__ import annotations

import pytest
import torch
import yaml

import visualtok
from visualtok.quantize import QuantizerConfig, build_quantizer, input_checks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

FAMILIES = {
    "vq": QuantizerConfig(type="vq", dim=12, codebook_size=4096, l2_normalize=True),
    "vq_ema": QuantizerConfig(type="vq", dim=32, codebook_size=1024, ema=True),
    "lfq": QuantizerConfig(type="lfq", dim=16, group_size=8),
    "fsq": QuantizerConfig(type="fsq", dim=6, levels=(8, 8, 8, 5, 5, 5)),
    "rvq": QuantizerConfig(type="rvq", dim=32, codebook_size=256, num_quantizers=4),
    "ptq": QuantizerConfig(type="ptq", dim=16, bins=64),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_quantizer_codes_match_cpu_and_ignore_cuda_autocast(family):
    q = build_quantizer(FAMILIES[family]).eval()
    z = torch.randn(4, 256, q.dim)
    cpu_codes = q.encode(z)
    qc = q.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = qc(z.cuda())
    assert out.z_q.dtype == torch.float32
    agree = (out.codes.cpu() == cpu_codes).all(-1).float().mean().item()
    assert agree >= 0.999, f"{family}: only {agree:.4f} of tokens agree with CPU"
    assert torch.equal(qc.decode(out.codes), out.z_q)


def test_titok_gpu_matches_cpu(real_photos):
    tok = visualtok.create_model("titok_tiny", image_size=128).eval()
    cpu_codes = tok.encode(real_photos)
    cpu_rec = tok.decode(cpu_codes)
    tok = tok.cuda()
    gpu_codes = tok.encode(real_photos.cuda()).cpu()
    assert (gpu_codes == cpu_codes).float().mean() >= 0.99
    torch.testing.assert_close(tok.decode(cpu_codes.cuda()).cpu(), cpu_rec, atol=1e-3, rtol=0)


def test_gpt_kv_cache_exact_on_gpu():
    gpt = visualtok.create_model("gpt_tiny", num_tokens=16).cuda().eval()
    with torch.no_grad():
        for p in gpt.head.parameters():
            p.normal_(0, 0.5)
    g = torch.Generator(device="cuda").manual_seed(0)
    labels = torch.tensor([1, 2, 3], device="cuda")
    a = gpt.generate(labels, generator=g, use_cache=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    b = gpt.generate(labels, generator=g, use_cache=False)
    assert torch.equal(a, b)


def test_trainer_bf16_on_gpu(tmp_path, real_photos):
    from _train_helpers import tiny_config, write_photos

    from visualtok.train import run_training

    data = write_photos(tmp_path / "photos", real_photos)
    cfg = tiny_config(data, tmp_path / "run")
    cfg["trainer"]["mixed_precision"] = "bf16"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_training(path)
    model = visualtok.load(out / "model")
    assert model.encode(real_photos[:, :, :32, :32]).shape[0] == 4


# the issue-#2 settings of benchmarks/bench_quantizers.py (smaller codebooks where it does not
# change the code path)
NO_SYNC = {
    "vq_cosine_ema": QuantizerConfig(type="vq", dim=12, codebook_size=4096, l2_normalize=True,
                                     ema=True),
    "fsq": QuantizerConfig(type="fsq", dim=6, levels=(8, 8, 8, 5, 5, 5)),
    "rvq_ema": QuantizerConfig(type="rvq", dim=128, codebook_size=1024, num_quantizers=8,
                               ema=True),
    "lfq": QuantizerConfig(type="lfq", dim=14, group_size=7),
}


@pytest.mark.parametrize("family", sorted(NO_SYNC))
def test_quantizer_training_step_never_syncs_on_cuda_with_checks_off(family):
    """With the input checks switched off (as the trainer runs), a training step (forward +
    backward) reads nothing back to the host."""
    q = build_quantizer(NO_SYNC[family]).cuda()
    z = torch.randn(4, 4096, q.dim, device="cuda", requires_grad=True)

    def train_step():
        out = q.train()(z)
        (out.z_q.square().mean() + out.losses["total"]).backward()

    with input_checks(q, False):
        train_step()  # warm-up: first-call work (cuBLAS handles, allocator) is not measured
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_nan_latents_on_cuda_raise_value_error_and_context_stays_usable():
    q = build_quantizer(NO_SYNC["vq_cosine_ema"]).cuda()
    z = torch.randn(2, 3, 12, device="cuda")
    z[0, 1, 2] = float("inf")
    for training in (True, False):
        q.train(training)
        with pytest.raises(ValueError, match="NaN or inf"):
            q(z.requires_grad_(training))
        assert torch.isfinite(q(torch.randn(2, 3, 12, device="cuda")).z_q).all()
    with pytest.raises(ValueError, match="NaN or inf"):
        q.encode(z.detach())
