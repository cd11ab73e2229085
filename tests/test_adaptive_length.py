"""Adaptive length (``visualtok.metrics.adaptive``): explicit padding and lengths, the bisection
baseline's guarantee, the single-pass predictor, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import visualtok
from visualtok.image.flextok import TINY_VAE_CONFIG, FlexTok, FlexTokConfig
from visualtok.metrics.adaptive import (
    LengthPredictor,
    LengthPredictorConfig,
    decode_adaptive,
    encode_adaptive,
    quality_curves,
)
from visualtok.metrics.image import psnr

pytestmark = pytest.mark.usefixtures("one_thread")

KW = {"steps": 2, "guidance_scale": 1.0}


@pytest.fixture(scope="module")
def tok() -> FlexTok:
    torch.manual_seed(0)
    cfg = FlexTokConfig(image_size=32, vae=dict(TINY_VAE_CONFIG), num_registers=8, posemb_grid=2,
                        encoder_dim=32, encoder_depth=1, decoder_dim=32, decoder_depth=1,
                        head_dim=32, zero_init=False)
    return FlexTok(cfg).eval()


def test_search_meets_target_or_uses_all_tokens(tok):
    x = torch.rand(3, 3, 32, 32)
    _, curves = quality_curves(tok, x, decode_kwargs=KW)
    target = float(curves.median())  # some images meet it early, some late or never
    out = encode_adaptive(tok, x, target, decode_kwargs=KW)
    assert out.codes.shape == (3, 8, 6) and out.lengths.shape == (3,)
    assert out.stats["method"] == "search" and out.stats["decodes"] == 3 * 3  # log2(8) per image
    full = tok.encode(x)
    for i, k in enumerate(out.lengths.tolist()):
        assert 1 <= k <= 8
        assert torch.equal(out.prefix(i), full[i : i + 1, :k])
        assert (out.codes[i, k:] == out.pad_value).all()  # padding is explicit
        assert k == 8 or float(curves[i, k - 1]) >= target
    rec = decode_adaptive(tok, out, **KW)
    for i, k in enumerate(out.lengths.tolist()):
        # the default noise is per image, so an image decodes alike alone or in a group
        torch.testing.assert_close(rec[i : i + 1], tok.decode(full[i : i + 1, :k], **KW),
                                   rtol=0, atol=1e-5)


def test_predictor_single_pass(tok, tmp_path):
    x = torch.rand(4, 3, 32, 32)
    pred = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, hidden=16))
    curve = pred(tok.quantizer.decode(tok.encode(x)))
    assert curve.shape == (4, 8) and (curve.diff(dim=1) >= 0).all()  # monotone by construction
    handmade = torch.tensor([[10.0, 12, 14, 16, 18, 20, 22, 24], [5.0] * 8])
    assert pred.choose(handmade, 15.0).tolist() == [4, 8]
    pred.config.margin = 2.0
    assert pred.choose(handmade, 15.0).tolist() == [5, 8]
    out = encode_adaptive(tok, x, 15.0, method="predictor", predictor=pred)
    assert out.stats["decodes"] == 0
    assert torch.equal(out.lengths, pred.choose(curve, 15.0))
    loaded = visualtok.load(pred.save_pretrained(tmp_path / "pred"))
    assert isinstance(loaded, LengthPredictor) and loaded.config.margin == 2.0
    assert torch.equal(loaded(tok.quantizer.decode(tok.encode(x))), curve)


def test_errors(tok):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="target must be a PSNR"):
        encode_adaptive(tok, x, -3)
    with pytest.raises(ValueError, match="metric"):
        encode_adaptive(tok, x, 20.0, metric="fid")
    with pytest.raises(ValueError, match="method"):
        encode_adaptive(tok, x, 20.0, method="guess")
    with pytest.raises(ValueError, match="needs a trained LengthPredictor"):
        encode_adaptive(tok, x, 20.0, method="predictor")
    wrong = LengthPredictor(LengthPredictorConfig(num_tokens=16, token_dim=6))
    with pytest.raises(ValueError, match="trained for 16 tokens"):
        encode_adaptive(tok, x, 20.0, method="predictor", predictor=wrong)
    with pytest.raises(ValueError, match="supports_prefix"):
        encode_adaptive(torch.nn.Linear(2, 2), x, 20.0)
    assert psnr(x, x).item() > 90


def test_predictor_on_a_length_grid():
    pred = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, hidden=8,
                                                 lengths=(1, 4, 8)))
    assert pred(torch.zeros(2, 8, 6)).shape == (2, 3)
    curve = torch.tensor([[10.0, 16.0, 20.0], [10.0, 12.0, 14.0]])
    assert pred.choose(curve, 15.0).tolist() == [4, 8]
    with pytest.raises(ValueError, match="lengths must increase"):
        LengthPredictor(LengthPredictorConfig(num_tokens=8, lengths=(4, 2, 8)))
    with pytest.raises(ValueError, match="end at 8"):
        LengthPredictor(LengthPredictorConfig(num_tokens=8, lengths=(1, 4)))


def test_train_length_predictor_script(tok, tmp_path, real_photos):
    """The training script end to end: RD curves (cached), fit, held-out margin, checkpoint."""
    import sys
    from pathlib import Path

    from _train_helpers import write_photos

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
    import train_length_predictor as script

    photos = write_photos(tmp_path / "photos", real_photos)
    (photos / "kodak").mkdir()  # held-out sub-folders are skipped
    write_photos(photos / "kodak", real_photos[:1])
    model_dir = tok.save_pretrained(tmp_path / "tok")
    out = script.main([str(model_dir), str(photos), "--out", str(tmp_path / "pred"), "--steps",
                       "2", "--guidance", "1.0", "--lengths", "1,4,8", "--folds", "2",
                       "--targets", "10"])
    pred = visualtok.load(out)
    assert pred.lengths == (1, 4, 8) and pred.config.decode_kwargs == KW
    # one of the 4 photos calibrates a single margin for the decisions at the --targets
    assert pred.config.inputs == "tokens+image" and pred.config.margins == ()
    from safetensors.torch import load_file

    curves = load_file(str(out / "curves.safetensors"))
    assert curves["psnr"].shape == (4, 3) and curves["z_q"].shape == (4, 8, 6)  # kodak skipped
    assert curves["images"].dtype == torch.uint8 and curves["lengths"].tolist() == [1, 4, 8]
    report = json.loads((out / "fit.json").read_text())
    assert report["images"] == 4 and report["simulated"][0]["target"] == 10.0
    assert report["calibration_images"] == 1 and report["margin"] == pred.config.margin
    assert curves["group"].tolist() == [0, 1, 2, 3]  # one photo each
    x = real_photos[:2, :, :32, :32]
    got = encode_adaptive(tok, x, 10.0, method="predictor", predictor=pred)
    curve = pred(tok.quantizer.decode(tok.encode(x)), x)
    assert torch.equal(got.lengths, pred.choose(curve, 10.0))
    with pytest.raises(ValueError, match="also takes the images"):
        pred(tok.quantizer.decode(tok.encode(x)))
    with pytest.raises(ValueError, match="holds curves at lengths"):  # the cache must match
        script.main([str(model_dir), str(photos), "--out", str(tmp_path / "pred"),
                     "--lengths", "1,2,8"])


def test_linear_predictor_recovers_a_linear_curve_model():
    """Ridge on curves that are exactly linear in the inputs: near-zero out-of-fold error, so the
    margins are tiny and the decisions match the true smallest k."""
    import argparse
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
    import train_length_predictor as script

    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 8, 6, generator=g)
    lengths = (1, 2, 4, 8)
    probe = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, lengths=lengths,
                                                  hidden=0))
    x = probe.features(z)
    w = torch.randn(x.shape[1], generator=g)
    q = 15.0 + (x @ w)[:, None] * 0.3 + torch.tensor([0.0, 1.0, 2.0, 3.0])
    args = argparse.Namespace(folds=4, epochs=0, lr=0.0, seed=0, quantile=0.9, targets=[16.0])
    cfg = LengthPredictorConfig(num_tokens=8, token_dim=6, lengths=lengths, hidden=0)
    model, report = script.fit({"z_q": z, "psnr": q}, cfg, args)
    assert report["cv_rmse"] < 0.05 < report["mean_curve_rmse"]
    assert max(abs(m) for m in model.config.margins) < 0.1
    sim = report["simulated"][0]
    assert sim["met"] >= 0.85 and sim["tokens"] <= 1.1 * sim["oracle_tokens"]


def test_rate_distortion_adaptive_mode(tok, tmp_path, real_photos):
    """eval/rate_distortion.py --adaptive: tokens per image against quality for the predictor and
    the search at each target, drawn over the fixed-length curve."""
    import importlib.util
    from pathlib import Path

    from _train_helpers import write_photos

    path = Path(__file__).resolve().parent.parent / "eval" / "rate_distortion.py"
    spec = importlib.util.spec_from_file_location("eval_rate_distortion", path)
    rd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rd)
    photos = write_photos(tmp_path / "photos", real_photos[:2])
    model_dir = tok.save_pretrained(tmp_path / "tok")
    pred = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, hidden=0,
                                                 lengths=(1, 4, 8), decode_kwargs=KW))
    pred_dir = pred.save_pretrained(tmp_path / "pred")
    res = rd.main([str(model_dir), str(photos), "--no-fid", "--tokens", "1,4,8", "--decode-steps",
                   "2", "--guidance", "1.0", "--adaptive", str(pred_dir), "--targets", "9", "12",
                   "--out", str(tmp_path / "rd"), "--no-progress"])
    pts = res["adaptive"]
    assert [(p["method"], p["target"]) for p in pts] == [
        ("search", 9.0), ("predictor", 9.0), ("search", 12.0), ("predictor", 12.0)]
    for p in pts:
        assert len(p["lengths"]) == 2
        assert p["mean_tokens"] == pytest.approx(sum(p["lengths"]) / len(p["lengths"]))
        if p["method"] == "search":  # meets the target, or even all tokens do not
            assert all(q >= p["target"] or k == 8 for k, q in zip(p["lengths"], p["psnr"]))
    assert (tmp_path / "rd" / "rate_distortion.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        rd.main([str(model_dir), str(photos), "--adaptive", str(pred_dir)])  # no --targets


def test_adaptive_length_script_table(tok, tmp_path, real_photos):
    """eval/adaptive_length.py: one row per target with both methods' figures and the ratios."""
    import importlib.util
    from pathlib import Path

    from _train_helpers import write_photos

    path = Path(__file__).resolve().parent.parent / "eval" / "adaptive_length.py"
    spec = importlib.util.spec_from_file_location("eval_adaptive_length", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    photos = write_photos(tmp_path / "photos", real_photos[:2])
    pred = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, hidden=0,
                                                 lengths=(1, 4, 8), decode_kwargs=KW))
    out = script.main([str(tok.save_pretrained(tmp_path / "tok")),
                       str(pred.save_pretrained(tmp_path / "pred")), str(photos),
                       "--targets", "10", "--out", str(tmp_path / "a")])
    (row,) = out["rows"]
    assert row["images"] == 2 and row["target"] == 10.0
    assert row["token_ratio"] == pytest.approx(row["predictor_tokens"] / row["search_tokens"])
    assert row["detail"]["predictor"]["seconds"] > 0
    assert json.loads((tmp_path / "a" / "results.json").read_text())["rows"][0]["images"] == 2


def _script():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
    import train_length_predictor as script

    return script


def test_crops_of_a_photo_share_a_group_and_a_side_of_the_split():
    from pathlib import Path

    script = _script()
    names = ["a__x.png", "a__x__s0.25_0_128.jpg", "b__solar4.webp", "b__solar4__s0.5_96_0.jpg",
             "c.jpg"]
    groups = script.photo_groups([Path(n) for n in names])
    assert groups.tolist() == [0, 0, 1, 1, 2]
    held = script.split_groups(groups, 0.5, seed=0)
    assert held[0] == held[1] and held[2] == held[3] and 0 < int(held.sum()) < 5


def test_calibrated_margin_is_the_smallest_that_meets_the_coverage():
    """Held-out curves with a known prediction error: at the calibrated margin the decisions meet
    the target on >= the conformal share of the images; 0.01 dB less does not."""
    script = _script()
    g = torch.Generator().manual_seed(0)
    lengths = (1, 2, 4, 8)
    model = LengthPredictor(LengthPredictorConfig(num_tokens=8, token_dim=6, lengths=lengths))
    q = 10.0 + torch.rand(60, 1, generator=g) * 4 + torch.tensor([0.0, 2.0, 4.0, 6.0])
    pred = q + 0.5 * torch.randn(60, 1, generator=g)  # each image's curve off by one offset
    margin = script.calibrate(model, pred, q, [15.0], coverage=0.9)
    assert model.config.margin == margin
    rows = torch.arange(60)

    def met(m):
        k = model.choose(pred - m, 15.0, margins=False)
        return int((model.dense(q)[rows, k - 1] >= 15.0 - 1e-6).sum())

    need = -(-(61 * 9) // 10)  # ceil((n + 1) * 0.9) = 55 of 60
    assert met(margin) >= need > met(margin - 0.01)
    assert 0.2 < margin < 1.5  # about the 90% quantile of the 0.5 dB error


def test_dct_sparsity_matches_an_explicit_inverse_transform():
    from visualtok.metrics.adaptive import _dct_basis, dct_sparsity, image_statistics

    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    got = dct_sparsity(x, keep=(0.01, 0.1, 0.5))
    dh, dw = _dct_basis(16, x.device), _dct_basis(24, x.device)
    coef = dh @ x.double() @ dw.T
    for j, share in enumerate((0.01, 0.1, 0.5)):
        m = max(1, round(share * coef[0].numel()))
        for b in range(2):
            c = coef[b].flatten()
            kept = torch.zeros_like(c)
            top = c.abs().topk(m).indices
            kept[top] = c[top]
            rec = dh.T @ kept.view(3, 16, 24) @ dw
            want = -10 * torch.log10((rec - x[b].double()).pow(2).mean())
            assert float(got[b, j]) == pytest.approx(float(want), abs=1e-3)
    assert image_statistics(x).shape == (2, 22)


def test_risk_rule_trades_tokens_for_coverage():
    """Rule "risk": k minimises k / N + w * P(miss); a larger weight never picks fewer tokens, a
    huge one reaches the sure choice, a curve predicted to miss at N gets N."""
    lengths = (1, 2, 4, 8)
    with pytest.raises(ValueError, match="needs sigma"):
        LengthPredictor(LengthPredictorConfig(num_tokens=8, lengths=lengths, rule="risk"))
    pred = LengthPredictor(LengthPredictorConfig(num_tokens=8, lengths=lengths, rule="risk",
                                                 sigma=(0.5, 0.5, 0.5, 0.5)))
    curve = torch.tensor([[10.0, 14.0, 16.0, 18.0], [10.0, 11.0, 12.0, 13.0]])
    ks = []
    for w in (0.0, 0.3, 3.0, 1e6):
        pred.config.risk_weight = w
        ks.append(pred.choose(curve, 15.0).tolist())
    assert ks[0] == [1, 8] and ks[-1][1] == 8  # second image: predicted to miss even at N
    firsts = [k[0] for k in ks]
    assert firsts == sorted(firsts) and firsts[-1] >= 4  # 16 dB at k = 4 is 2 sigma above 15
    assert pred.choose(curve, 15.0, margins=False).tolist() == [3, 8]  # the curve as it is
