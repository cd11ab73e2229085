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
