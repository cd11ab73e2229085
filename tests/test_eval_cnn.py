"""eval/rfid.py and eval/rate_distortion.py on the CNN tokenizers (random tiny weights): the 2D
VQGAN gives one operating point, ReTok decodes any prefix of its N + M tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_metrics_eval_scripts import _script, image_folder  # noqa: F401 (fixture)

from visualtok.metrics.fid import RandomTinyFeatures

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rate_distortion_vqgan_single_point_and_retok_prefixes(tmp_path, image_folder):  # noqa: F811
    rd = _script("rate_distortion")
    res = rd.main(["vqgan_tiny", str(image_folder), "--random-init", "--no-fid",
                   "--batch-size", "4", "--max-images", "4", "--out", str(tmp_path / "vq"),
                   "--no-progress"])
    assert not res["flexible"] and [p["tokens"] for p in res["points"]] == [64]
    assert res["points"][0]["bits"] == pytest.approx(64 * 10)  # 8x8 codes of a 1024 codebook
    res = rd.main(["retok_tiny", str(image_folder), "--random-init", "--features", "random-tiny",
                   "--tokens", "1,32,56", "--batch-size", "4", "--max-images", "4",
                   "--out", str(tmp_path / "retok"), "--no-progress"],
                  extractor=RandomTinyFeatures(feature_dim=16))
    assert res["flexible"] and [p["tokens"] for p in res["points"]] == [1, 32, 56]
    assert all(np.isfinite(p["psnr"]) and p["fid"] is not None for p in res["points"])
    saved = json.loads((tmp_path / "retok" / "results.json").read_text())
    assert saved["points"][2]["bits"] == pytest.approx(56 * 10)


def test_rfid_vqgan(tmp_path, image_folder):  # noqa: F811
    res = _script("rfid").main(
        ["vqgan_tiny", str(image_folder), "--random-init", "--features", "random-tiny",
         "--batch-size", "3", "--max-images", "5", "--device", "cpu", "--out", str(tmp_path),
         "--no-progress"],
        extractor=RandomTinyFeatures(feature_dim=16),
    )
    assert res["num_samples"] == 5 and np.isfinite(res["rfid"])
    assert res["codes"]["tokens_per_image"] == 64


def _rd_results(path, model, points, size=(64, 64), n=24):
    path.mkdir(parents=True, exist_ok=True)
    pts = [{"tokens": k, "bits": k * 10.0, "psnr": psnr, "ssim": ssim, "fid": None}
           for k, psnr, ssim in points]
    (path / "results.json").write_text(json.dumps(
        {"model": model, "images": "kodak", "num_samples": n, "image_size": list(size),
         "points": pts}))
    return path / "results.json"


def test_rd_compare_table_at_equal_bits_and_plot(tmp_path):
    a = _rd_results(tmp_path / "a", "retok_tiny",
                    [(1, 12.0, 0.2), (16, 15.5, 0.4), (56, 17.0, 0.5)])
    b = _rd_results(tmp_path / "b", "vqgan_tiny", [(16, 16.25, 0.45)])
    out = tmp_path / "cmp"
    res = _script("rd_compare").main([str(a), str(b), "--labels", "ReTok,VQGAN", "--out", str(out)])
    assert res["equal_bits"] == [160.0]
    md = (out / "table.md").read_text()
    equal = md.split("**All points**")[0]
    assert "| ReTok | 16 | 160 | 15.50 | 0.4000 |" in equal
    assert "| VQGAN | 16 | 160 | 16.25 | 0.4500 |" in equal and "| 56 |" not in equal
    assert (out / "rate_distortion.png").stat().st_size > 0


def test_rd_compare_refuses_runs_on_different_images(tmp_path):
    a = _rd_results(tmp_path / "a", "retok_tiny", [(16, 15.5, 0.4)])
    b = _rd_results(tmp_path / "b", "vqgan_tiny", [(16, 16.2, 0.45)], size=(128, 128))
    with pytest.raises(ValueError, match="different sizes"):
        _script("rd_compare").main([str(a), str(b), "--out", str(tmp_path / "cmp")])
    with pytest.raises(ValueError, match="--labels gives 1 names for 2"):
        _script("rd_compare").main([str(a), str(a), "--labels", "x", "--out", str(tmp_path)])
