"""The CNN tokenizers' bf16 path (``tok.to(torch.bfloat16)``: channels-last bf16 trunk, fp32
quantizer) and the layout helpers it relies on (``visualtok.nn.conv``)."""

from __future__ import annotations

import copy

import pytest
import torch

from visualtok import create_model
from visualtok.nn.conv import depth_to_space, fast_layout, group_norm


def _reference_group_norm(x: torch.Tensor, groups: int) -> torch.Tensor:
    xd = x.double().contiguous().view(x.shape[0], groups, -1)
    mean, var = xd.mean(-1, keepdim=True), xd.var(-1, unbiased=False, keepdim=True)
    return ((xd - mean) / (var + 1e-6).sqrt()).view(x.shape)


@pytest.mark.parametrize("channels", [32, 128])
def test_group_norm_on_channels_last_is_accurate_when_the_mean_dominates(channels):
    # one or four channels per group, means up to +-3 against a spread of 0.01: a variance taken as
    # E[x^2] - E[x]^2 cancels here (PyTorch's CPU channels-last kernel does that)
    torch.manual_seed(0)
    x = torch.randn(2, channels, 32, 32) * 0.01 + torch.linspace(-3, 3, channels)[:, None, None]
    norm = group_norm(channels)
    ref = _reference_group_norm(x, 32)
    with torch.no_grad():
        out_cl = norm(x.contiguous(memory_format=torch.channels_last))
        out = norm(x)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert float((out.double() - ref).abs().max()) < 2e-4
    assert float((out_cl.double() - ref).abs().max()) < 2e-4


def test_depth_to_space_keeps_values_and_layout():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3, 5)
    expected = x.view(2, 2, 2, 3, 3, 5).permute(0, 3, 4, 1, 5, 2).reshape(2, 3, 6, 10)
    out = depth_to_space(x, 2)
    out_cl = depth_to_space(x.contiguous(memory_format=torch.channels_last), 2)
    assert torch.equal(out, expected) and out.is_contiguous()
    assert torch.equal(out_cl, expected)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)


def test_fast_layout_is_channels_last_for_bf16_only():
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert fast_layout(x).is_contiguous()  # fp32: NCHW (the parity layout)
    xb = fast_layout(x.contiguous().bfloat16())
    assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()


@pytest.mark.parametrize("name", ["vqgan_tiny", "retok_tiny"])
def test_bf16_cast_keeps_the_quantizer_fp32_and_mostly_the_codes(name, photos_64):
    torch.manual_seed(0)
    model = create_model(name).eval()
    low = copy.deepcopy(model).to(torch.bfloat16)
    assert low.encoder.conv_in.weight.dtype == torch.bfloat16
    assert low.post_quant_conv.weight.dtype == torch.bfloat16
    for mod in (low.quantizer, low.quant_conv):  # codes are searched on fp32 values
        assert all(t.dtype == torch.float32 for t in [*mod.parameters(), *mod.buffers()]
                   if t.is_floating_point())
    codes = model.encode(photos_64)
    codes16 = low.encode(photos_64)
    assert codes16.dtype == torch.int64 and codes16.shape == codes.shape
    assert float((codes16 == codes).float().mean()) > 0.85  # measured 0.93 (random weights)
    pixels, pixels16 = model.decode(codes), low.decode(codes)
    assert pixels16.dtype == torch.float32 and pixels16.is_contiguous()
    assert float((pixels16 - pixels).abs().mean()) < 0.02  # measured 0.004-0.007
    assert 0.0 <= float(pixels16.min()) and float(pixels16.max()) <= 1.0


@pytest.fixture(scope="module")
def photos_64():
    from benchmarks.bench_titok import real_photos

    return real_photos(4, 64)


def test_wrong_family_checkpoint_and_prefix_length_errors(tmp_path, photos_64):
    """The issue's clear errors that the parity tests do not cover: a saved VQGAN loaded as a ReTok
    (and back), and ``encode(num_tokens=k)`` outside 1..N+M."""
    from visualtok.hub import CheckpointError
    from visualtok.image.retok import ReTok
    from visualtok.image.vqgan import VQGAN

    create_model("vqgan_tiny").save_pretrained(tmp_path / "vq")
    create_model("retok_tiny").save_pretrained(tmp_path / "re")
    with pytest.raises(CheckpointError, match="holds a VQGAN, not a ReTok"):
        ReTok.from_pretrained(tmp_path / "vq")
    with pytest.raises(CheckpointError, match="holds a ReTok, not a VQGAN"):
        VQGAN.from_pretrained(tmp_path / "re")
    retok = ReTok.from_pretrained(tmp_path / "re").eval()
    assert retok.encode(photos_64[:1], num_tokens=56).shape == (1, 56, 1)
    for k in (0, 57, 1.5):
        with pytest.raises(ValueError, match=r"num_tokens must be an int in \[1, 56\]"):
            retok.encode(photos_64[:1], num_tokens=k)
