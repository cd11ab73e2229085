"""CUDA checks (``-m gpu``; skipped without a GPU): the same contracts as on CPU, on the device.

Run on a GPU machine with ``python -m pytest -m gpu -q``.
"""

from __future__ import annotations

import pytest
import torch
import yaml

import visualtok
from visualtok.quantize import QuantizerConfig, build_quantizer

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
