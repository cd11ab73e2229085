"""TiTok3D video tokenizer: tubelet layout, round trip, errors, training on a real clip, resume."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import write_config
from conftest import shared_path
from safetensors.torch import load_file

import visualtok
from visualtok.data.image_io import save_image
from visualtok.registry import create_model
from visualtok.train import load_train_config
from visualtok.train.trainer import Trainer
from visualtok.video.io import read_video
from visualtok.video.titok3d import tubelets_to_video, video_to_tubelets


def test_tubelet_layout_matches_conv3d_and_round_trips():
    torch.manual_seed(0)
    v = torch.rand(2, 8, 3, 16, 24)
    tub = video_to_tubelets(v, (4, 8, 8))
    assert tub.shape == (2, 2 * 2 * 3, 4 * 8 * 8 * 3)
    assert torch.equal(tubelets_to_video(tub, (2, 2, 3), (4, 8, 8)), v)
    # tubelet order = Conv3d's flattened output order; pixel order (t, h, w, c)
    conv = torch.nn.Conv3d(3, 4 * 8 * 8 * 3, (4, 8, 8), stride=(4, 8, 8), bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(4 * 8 * 8 * 3):
            t, rem = divmod(i, 8 * 8 * 3)
            h, rem = divmod(rem, 8 * 3)
            w, c = divmod(rem, 3)
            conv.weight[i, c, t, h, w] = 1.0
        ref = conv(v.transpose(1, 2)).flatten(2).transpose(1, 2)
    assert torch.allclose(ref, tub, atol=1e-6)


@pytest.mark.parametrize("pos", ["factorized", "learned"])
def test_shapes_codes_prefix_and_exact_round_trip(pos):
    torch.manual_seed(0)
    m = create_model("titok3d_tiny", pos_embed=pos).eval()
    v = torch.rand(2, 8, 3, 32, 32)
    codes = m.encode(v)
    assert codes.shape == (2, 16, 4) and codes.dtype == torch.int64
    assert m.code_layout.num_factors == 4 and m.bits_per_clip == pytest.approx(16 * 9.9658, 1e-3)
    out = m.decode(codes)
    assert out.shape == v.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    with torch.no_grad():
        z_q = m.quantize(m.encode_latents(v)).z_q
        assert torch.equal(out, m.decode_latents(z_q).clamp(0, 1))  # decode(encode) = quantized
    assert m.decode(codes[:, :3]).shape == v.shape  # any prefix decodes
    assert torch.equal(m.encode((v * 255).round().to(torch.uint8)),
                       m.encode((v * 255).round() / 255))


def test_clear_errors():
    m = create_model("titok3d_tiny").eval()
    with pytest.raises(ValueError, match="zero frames"):
        m.encode(torch.rand(1, 0, 3, 32, 32))
    with pytest.raises(ValueError, match="channel-first"):
        m.encode(torch.rand(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the tubelet's 4"):
        m.encode(torch.rand(1, 6, 3, 32, 32))
    with pytest.raises(ValueError, match=r"must be \[B, 8, 3, 32, 32\]"):
        m.encode(torch.rand(1, 8, 3, 40, 40))
    with pytest.raises(ValueError, match=r"latents must be \[B, k, 4\]"):
        m.decode_latents(torch.rand(1, 16, 5))  # features of the wrong dimension
    with pytest.raises(ValueError, match="codes must be"):
        m.decode(torch.zeros(1, 17, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        create_model("titok3d_tiny", num_frames=6)
    with pytest.raises(ValueError, match="pos_embed"):
        create_model("titok3d_tiny", pos_embed="sincos")


def _config(clips, out, steps, **trainer):
    return {
        "task": "video_tokenizer",
        "model": {"name": "titok3d_tiny", "overrides": {}},
        "data": {"type": "video", "path": str(clips), "image_size": 32, "num_frames": 8,
                 "frame_stride": 2},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "loss": {"reconstruction": "l2"},
        "trainer": {"steps": steps, "batch_size": 4, "output_dir": str(out), "log_every": 1,
                    "image_every": 0, "ckpt_every": 1000, "progress": False, "tensorboard": False,
                    "nested_dropout": {"enabled": True}, **trainer},
    }


@pytest.fixture(scope="module")
def real_clip(tmp_path_factory):
    """The real stream-of-water clip's 90 frames at 40x40 as a frames folder (cheap to reread)."""
    root = tmp_path_factory.mktemp("clips")
    video = read_video(shared_path("data", "video", "mdn_stream-of-water.mp4"), sampling="all",
                       size=40, crop=40)
    (root / "water").mkdir()
    for i, frame in enumerate(video):
        save_image(frame, root / "water" / f"{i:04d}.png")
    return root


def test_training_lowers_loss_on_a_real_clip_then_save_load(real_clip, tmp_path):
    torch.manual_seed(0)
    cfg = write_config(tmp_path / "a.yaml", _config(real_clip, tmp_path / "a", 20))
    tr = Trainer(load_train_config(cfg))
    tr.fit()
    rec = [h["loss/reconstruction"] for h in tr.history]
    assert sum(rec[-5:]) / 5 < 0.6 * sum(rec[:3]) / 3, rec
    media = tr.task.log_media({"video": torch.rand(2, 8, 3, 32, 32)})
    assert media["reconstruction"].shape[:2] == (1, 3)  # one frame-grid picture
    model = visualtok.load(tmp_path / "a" / "model")
    assert type(model).__name__ == "TiTok3D"
    v = torch.rand(1, 8, 3, 32, 32)
    assert torch.equal(model.encode(v), tr.task.model.eval().encode(v))


def test_resume_is_exact(real_clip, tmp_path):
    full = _config(real_clip, tmp_path / "full", 4)
    Trainer(load_train_config(write_config(tmp_path / "f.yaml", full))).fit()
    part = _config(real_clip, tmp_path / "part", 2, ckpt_every=2)
    Trainer(load_train_config(write_config(tmp_path / "p.yaml", part))).fit()
    resumed = _config(real_clip, tmp_path / "part", 4, ckpt_every=2)
    tr = Trainer(load_train_config(write_config(tmp_path / "r.yaml", resumed)))
    tr.fit()
    assert tr.history[0]["step"] == 3
    wa = load_file(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "part" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
