"""``eval/audio_codec.py`` end to end on real speech with a tiny random EnCodec-style codec."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_path

sys.path.insert(0, str(REPO / "eval"))

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"n_filters": 4, "ratios": [8, 5], "dimension": 8, "lstm_layers": 1, "codebook_size": 32,
        "quantizer": {"type": "rvq", "dim": 8, "codebook_size": 32, "num_quantizers": 4,
                      "ema": True}}


def test_audio_codec_eval(tmp_path: Path):
    import audio_codec

    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    data = shared_path("data", "audio", "ljspeech_subset")
    res = audio_codec.main(["encodec_24khz", str(data), "--random-init", "--overrides",
                            json.dumps(TINY), "--max-files", "2", "--max-seconds", "1.0",
                            "--n-q", "1,4", "--out", str(tmp_path)])
    rows = res["rows"]
    assert [r["n_q"] for r in rows] == [None, 1, 4]  # the reference ceiling, then one per bitrate
    assert rows[0]["pesq_wb"] > 4.5 and rows[0]["mel_distance"] == 0.0
    assert rows[1]["kbps"] == pytest.approx(3.0) and rows[2]["kbps"] == pytest.approx(12.0)
    for r in rows[1:]:
        assert r["pesq_wb"] < rows[0]["pesq_wb"] and r["mel_distance"] > 0
        assert r["encode_x_realtime"] > 0 and r["decode_x_realtime"] > 0
    assert len(res["levels"]) == 4 and all(0 < u["usage"] <= 1 for u in res["levels"])
    assert set(res["unavailable"]) >= {"utmos", "speaker_similarity", "wer"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"][0]["si_sdr"] is None  # identical signals: infinite, not a number
    md = (tmp_path / "results.md").read_text()
    assert "| reference |" in md and "Unavailable" in md
    assert (tmp_path / "spectrograms.png").stat().st_size > 0


def test_opus_reference_row(tmp_path: Path):
    """``--opus 6``: real speech through libopus at ~6 kbps, a row beside the codec's."""
    import audio_codec

    av = pytest.importorskip("av")
    if "libopus" not in av.codecs_available:
        pytest.skip("PyAV without libopus")
    data = shared_path("data", "audio", "librispeech_samples")
    res = audio_codec.main(["codec_tiny", str(data), "--random-init", "--max-files", "1",
                            "--max-seconds", "3.0", "--n-q", "4", "--no-pesq", "--opus", "6",
                            "--out", str(tmp_path)])
    opus = res["rows"][-1]
    assert opus["label"] == "Opus 6 kbps" and 5.0 < opus["kbps"] < 9.0  # incl. the Ogg pages
    codec = res["rows"][1]  # a random codec is far worse than a real one
    assert opus["mel_distance"] < 0.7 * codec["mel_distance"]
    assert "| Opus 6 kbps |" in (tmp_path / "results.md").read_text()
