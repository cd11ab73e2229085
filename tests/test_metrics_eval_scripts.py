"""Smoke tests of eval/rfid.py, eval/gfid.py and eval/rate_distortion.py, run in-process on a tiny
random-weight TiTok and the random-tiny feature extractor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visualtok.data.image_io import save_image
from visualtok.metrics.fid import RandomTinyFeatures

EVAL = Path(__file__).resolve().parent.parent / "eval"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, real_photos):
    d = tmp_path_factory.mktemp("imgs")
    for i, img in enumerate(torch.cat([real_photos, real_photos.flip(-1)])):
        save_image(img[:, : 96 + 4 * i], d / f"{i:02d}.png")  # varied aspect: crops are exercised
    return d


@pytest.fixture
def tiny_registered():
    from visualtok.registry import list_models

    if "titok_tiny" not in list_models():
        pytest.skip("titok_tiny preset is not registered yet")


def test_rfid_script(tmp_path, image_folder, tiny_registered):
    out = tmp_path / "rfid"
    res = _script("rfid").main(
        ["titok_tiny", str(image_folder), "--random-init", "--overrides", '{"image_size": 64}',
         "--features", "random-tiny", "--batch-size", "3", "--max-images", "7", "--device", "cpu",
         "--pfid-rate", "0.5", "--out", str(out), "--no-progress"],
        extractor=RandomTinyFeatures(feature_dim=16),
    )
    saved = json.loads((out / "results.json").read_text())
    assert saved["num_samples"] == 7 and saved["rfid_label"] == "rFID[7]"
    assert saved["pfid"]["label"].startswith("pFID[0.5, ") and saved["pfid"]["num_samples"] == 7
    assert np.isfinite(saved["rfid"]) and saved["rfid"] >= 0
    assert 0 <= saved["ssim"] <= 1 and saved["psnr"] > 0
    assert saved["codes"]["tokens_per_image"] == res["codes"]["tokens_per_image"] > 0
    assert saved["bits_per_image"] == pytest.approx(saved["codes"]["bits_per_image"])
    assert (out / "reconstructions.png").stat().st_size > 0


def test_gfid_script_folder_and_adm_npz(tmp_path, image_folder, real_photos):
    gfid = _script("gfid")
    ext = RandomTinyFeatures(feature_dim=16)
    ref_npz = tmp_path / "ref.npz"
    gfid.main(["make-ref", str(image_folder), "--size", "64", "--stats-only", "--out",
               str(ref_npz), "--no-progress"], extractor=ext)
    res = gfid.main([str(image_folder), "--size", "64", "--reference", str(ref_npz),
                     "--out", str(tmp_path / "b"), "--no-progress"], extractor=ext)
    assert res["fid"] == pytest.approx(0.0, abs=1e-6) and res["num_samples"] == 8
    assert res["kid"] is None and "reference features" in res["note"]
    # --save-stats keeps the features: a reference that KID and precision/recall can use
    gfid.main([str(image_folder), "--size", "64", "--save-stats", str(tmp_path / "s.npz"),
               "--out", str(tmp_path / "a"), "--no-progress"], extractor=ext)
    res = gfid.main([str(image_folder), "--size", "64", "--reference", str(tmp_path / "s.npz"),
                     "--out", str(tmp_path / "b2"), "--no-progress"], extractor=ext)
    assert res["kid"] is not None and res["precision"] == 1.0
    # ADM format on both sides: samples and reference batch as arr_0 uint8 [N, H, W, 3]
    u8 = (torch.nn.functional.interpolate(real_photos, size=64) * 255).round().to(torch.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=u8.flip(-1).permute(0, 2, 3, 1).numpy())
    np.savez(tmp_path / "adm_ref.npz", arr_0=u8.permute(0, 2, 3, 1).numpy())
    res = gfid.main([str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "adm_ref.npz"),
                     "--kid-subsets", "5", "--out", str(tmp_path / "c"), "--no-progress"],
                    extractor=ext)
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert saved["num_samples"] == 4 and saved["reference_num_samples"] == 4
    assert saved["fid"] > 0 and saved["kid"] is not None and 0 <= saved["precision"] <= 1
    with pytest.raises(SystemExit):
        gfid.main([str(image_folder), "--out", str(tmp_path / "d")], extractor=ext)


def test_rate_distortion_script(tmp_path, image_folder, tiny_registered):
    out = tmp_path / "rd"
    res = _script("rate_distortion").main(
        ["titok_tiny", str(image_folder), "--random-init", "--overrides", '{"image_size": 64}',
         "--features", "random-tiny", "--tokens", "2,8,32", "--batch-size", "4",
         "--out", str(out), "--no-progress"],
        extractor=RandomTinyFeatures(feature_dim=16),
    )
    assert [p["tokens"] for p in res["points"]] == [2, 8, 32] and res["flexible"]
    assert res["points"][1]["bits"] == pytest.approx(8 * res["bits_per_token"])
    assert all(p["fid"] is not None and np.isfinite(p["psnr"]) for p in res["points"])
    assert (out / "rate_distortion.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["num_samples"] == 8
