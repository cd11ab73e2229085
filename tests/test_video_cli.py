"""``visualtok encode/decode/reconstruct`` on a real clip with a (random-init) video tokenizer."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_path
from safetensors import safe_open

from visualtok.cli import main
from visualtok.registry import create_model
from visualtok.video.io import probe, read_video


def test_video_encode_decode_reconstruct(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = create_model("titok3d_tiny").save_pretrained(tmp_path / "tok")
    clip = shared_path("data", "video", "mdn_stream-of-water.mp4")
    codes = tmp_path / "codes.safetensors"
    assert main(["encode", str(clip), "--model", str(ckpt), "--out", str(codes),
                 "--stride", "2"]) == 0
    with safe_open(str(codes), "pt") as f:
        c = f.get_tensor("codes")
        assert float(f.metadata()["fps"]) == probe(clip).fps / 2
    assert c.shape == (1, 16, 4)
    out = tmp_path / "decoded.mp4"
    assert main(["decode", str(codes), "--out", str(out)]) == 0
    video = read_video(out, sampling="all")
    assert video.shape == (8, 3, 32, 32)
    assert probe(out).fps == pytest.approx(probe(clip).fps / 2, rel=1e-3)  # rate kept (1/1001)
    assert main(["decode", str(codes), "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert main(["reconstruct", str(clip), "--model", str(ckpt), "--out", str(tmp_path / "r")]) == 0
    side = read_video(tmp_path / "r" / "mdn_stream-of-water_reconstruction.mp4", sampling="all")
    assert side.shape == (8, 3, 32, 64)  # original | reconstruction
    assert "PSNR" in capsys.readouterr().out
    # an image tokenizer given a video: one line, no traceback
    img_tok = create_model("titok_tiny").save_pretrained(tmp_path / "img")
    assert main(["encode", str(clip), "--model", str(img_tok)]) == 2
    err = capsys.readouterr().err
    assert "image tokenizer" in err and "Traceback" not in err


def test_eval_video_script(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "eval_video", Path(__file__).resolve().parent.parent / "eval" / "video.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    clip = shared_path("data", "video", "mdn_friday.mp4")
    res = mod.main(["titok3d_tiny", str(clip), "--random-init", "--stride", "3",
                    "--out", str(tmp_path)])
    (c,) = res["clips"]
    assert c["tokens_per_clip"] == 16 and c["fps"] == pytest.approx(10.0)
    assert c["bits_per_second"] == pytest.approx(c["bits_per_clip"] * 10.0 / 8)
    assert 0 < c["psnr"] < 60 and -1 <= c["ssim"] <= 1
    assert (tmp_path / "frames.png").is_file() and (tmp_path / "results.json").is_file()
