"""Evaluation that doesn't mislead (issue 17): spread-out --max-images subsets, the fast PIL image
loading against the old float path, codebook usage with its token count, KID without fake spread,
gfid.py make-ref and clear errors for bad reference files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image

from visualtok.data.image_io import (
    center_crop_resize,
    list_images,
    load_image,
    open_image,
    save_image,
    select_subset,
)
from visualtok.data.images import ImageFolderDataset, random_crop_resize
from visualtok.metrics.fid import (
    RandomTinyFeatures,
    fid_bootstrap,
    kernel_inception_distance,
    kid_subset_plan,
    load_reference,
    save_reference,
)
from visualtok.metrics.image import code_statistics, psnr
from visualtok.quantize import QuantizerConfig, build_quantizer

EVAL = Path(__file__).resolve().parent.parent / "eval"


def _script(name: str):
    sys.path.insert(0, str(EVAL))
    spec = importlib.util.spec_from_file_location(f"eval_{name}", EVAL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """A class-sorted folder (ImageNet layout): 4 classes x 6 images, each class its own colour."""
    d = tmp_path_factory.mktemp("classes")
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (200, 200, 30)]
    g = np.random.default_rng(0)
    for c, rgb in enumerate(colours):
        (d / f"class_{c}").mkdir()
        for i in range(6):
            arr = np.clip(np.array(rgb) + g.integers(-20, 20, (40, 48, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(d / f"class_{c}" / f"{i:02d}.png")
    return d


# ----------------------------------------------------------------------------- subsets
def test_subsets_are_spread_across_classes(class_folder):
    files = list_images(class_folder)
    assert len(files) == 24 and files[3].parent.name == "class_0"  # a prefix is one class
    strided, desc = select_subset(files, 4, "stride")
    assert sorted(p.parent.name for p in strided) == [f"class_{c}" for c in range(4)]
    assert "evenly strided" in desc and "4 of 24" in desc
    eight, _ = select_subset(files, 8, "stride")
    assert [p.parent.name for p in eight].count("class_2") == 2
    rand, desc = select_subset(files, 12, "random", seed=1)
    assert rand == select_subset(files, 12, "random", seed=1)[0]  # seeded: reproducible
    assert rand != select_subset(files, 12, "random", seed=2)[0]
    assert rand == sorted(rand) and len(set(rand)) == 12 and "seed 1" in desc
    assert len({p.parent.name for p in rand}) == 4
    assert select_subset(files, None)[0] == files and select_subset(files, 99)[0] == files
    with pytest.raises(ValueError, match="subset mode"):
        select_subset(files, 4, "first")
    with pytest.raises(ValueError, match="max_items"):
        select_subset(files, 0)


def test_eval_scripts_take_spread_subsets(class_folder, capsys):
    common = _script("_common")
    ap = argparse.ArgumentParser()
    common.add_subset_args(ap)
    args = ap.parse_args(["--max-images", "4"])
    args.images = class_folder
    paths, desc = common.select_images(args)
    assert {p.parent.name for p in paths} == {f"class_{c}" for c in range(4)}
    assert "evenly strided" in desc and "evenly strided" in capsys.readouterr().err
    # the gfid sample loader uses the same selection (folders and ADM .npz alike)
    gfid = _script("gfid")
    ns = argparse.Namespace(max_images=4, subset="stride", subset_seed=0, batch_size=8, size=16)
    batches, n, desc, size = gfid.sample_batches(class_folder, ns)
    means = torch.cat(list(batches)).mean((2, 3))
    assert n == 4 and size == [16, 16] and "evenly strided" in desc
    assert len({int(m.argmax()) for m in means}) == 3  # red, green, blue (+ yellow) present
    u8 = np.stack([np.full((8, 8, 3), i, np.uint8) for i in range(20)])
    np.savez(class_folder.parent / "s.npz", arr_0=u8)
    batches, n, desc, _ = gfid.sample_batches(class_folder.parent / "s.npz", ns)
    assert [int(b[0, 0, 0]) for b in torch.cat(list(batches))] == [0, 5, 10, 15]


# ----------------------------------------------------------------------------- fast loading
def test_fast_loading_matches_the_float_path_on_kodak():
    """PIL decode + crop + resize on uint8 vs the old torch bicubic on full-resolution float."""
    import visualtok

    files = list_images(shared_path("data", "images", "kodak"))[::6]  # 4 photos
    old = torch.stack([center_crop_resize(load_image(p), 128) for p in files])
    new = torch.stack([load_image(p, 128) for p in files])
    assert new.shape == old.shape == (4, 3, 128, 128)
    assert psnr(old, new).min() > 50  # the two inputs differ by uint8 rounding only
    # a reconstruction's PSNR barely moves: the shipped tokenizer, and an 8x block-mean codec
    tok = visualtok.load("titok_photo128")
    with torch.no_grad():
        for codec in (lambda x: tok.decode(tok.encode(x)).clamp(0, 1),
                      lambda x: torch.nn.functional.interpolate(
                          torch.nn.functional.avg_pool2d(x, 8), scale_factor=8, mode="bilinear")):
            p_old, p_new = psnr(old, codec(old)).mean(), psnr(new, codec(new)).mean()
            assert abs(float(p_old - p_new)) < 0.05, (float(p_old), float(p_new))


def test_dataset_crops_from_pil_match_the_tensor_path(tmp_path, real_photos):
    img = torch.nn.functional.interpolate(real_photos[:1], size=(150, 210), mode="bilinear")[0]
    path = save_image(img, tmp_path / "a.png")
    for resize_short, scale_range in ((None, None), (160, None), (None, (0.4, 1.0))):
        a = random_crop_resize(load_image(path), 64, torch.Generator().manual_seed(5),
                               resize_short, True, scale_range)
        b = random_crop_resize(open_image(path), 64, torch.Generator().manual_seed(5),
                               resize_short, True, scale_range)
        assert a.shape == b.shape == (3, 64, 64) and b.dtype == torch.float32
        assert (a - b).abs().mean() < 0.5 / 255 and (a - b).abs().max() < 8 / 255
    ds = ImageFolderDataset(tmp_path, 64, train=True, scale_range=(0.5, 1.0))
    x1, x2 = ds[(0, 123)]["image"], ds[(0, 123)]["image"]
    assert torch.equal(x1, x2)  # seeded crops stay exactly reproducible (resume)
    centre = ImageFolderDataset(tmp_path, 64, train=False)[0]["image"]
    assert (centre - random_crop_resize(load_image(path), 64, None)).abs().mean() < 0.5 / 255


def test_unreadable_image_is_a_value_error_naming_it(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png", 32)


# ----------------------------------------------------------------------------- code usage
def test_code_usage_reports_its_token_count_and_the_possible_maximum():
    q = build_quantizer(QuantizerConfig(type="fsq", dim=2, levels=(8, 8))).eval()
    codes = torch.tensor([[[0, 0], [1, 0], [2, 0]]])  # 3 tokens: factor 0 uses 3 of 8 codes
    rep = code_statistics(q, codes)
    f0, f1 = rep["factors"]
    assert rep["num_tokens"] == 3 and f0["max_possible_used"] == 3
    assert f0["usage"] == pytest.approx(3 / 8) and f0["usage_of_possible"] == pytest.approx(1.0)
    assert f0["perplexity_of_possible"] == pytest.approx(1.0)
    assert f1["usage_of_possible"] == pytest.approx(1 / 3)
    assert rep["usage_of_possible"] == pytest.approx((1 + 1 / 3) / 2)
    assert rep["used"] == 4 and rep["codebook_size"] == 16 and rep["max_possible_used"] == 6
    many = torch.arange(64).view(1, 64, 1).expand(1, 64, 2) % 8  # 64 tokens, every code x8
    rep = code_statistics(q, many)
    assert rep["factors"][0]["max_possible_used"] == 8 and rep["usage_of_possible"] == 1.0
    json.dumps(rep)


# ----------------------------------------------------------------------------- KID
def test_kid_small_sets_use_one_estimate_without_spread():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((30, 8)), rng.standard_normal((20, 8)) + 0.3
    kid, std = kernel_inception_distance(a, b, num_subsets=100, subset_size=1000)
    assert std is None and np.isfinite(kid)
    assert kid_subset_plan(30, 20, 100, 1000) == (1, None)
    # the same single estimate whatever the subset count or seed
    assert kernel_inception_distance(a, b, num_subsets=3, seed=7)[0] == kid
    big, big_std = kernel_inception_distance(a, b, num_subsets=10, subset_size=10)
    assert big_std is not None and big_std > 1e-6 and kid_subset_plan(30, 20, 10, 10) == (10, 10)
    shifted, _ = kernel_inception_distance(a, a + 2.0)
    assert shifted > kid > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"subset_size": 1}, "subset_size"), ({"subset_size": 0}, "subset_size"),
    ({"num_subsets": 0}, "num_subsets"), ({"num_subsets": 2.5}, "num_subsets"),
])
def test_kid_degenerate_settings_are_clear_errors(kwargs, match):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 4))
    with pytest.raises(ValueError, match=match):
        kernel_inception_distance(a, a, **kwargs)


def test_kid_smallest_valid_sets_are_finite():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    assert np.isfinite(kernel_inception_distance(a, b, subset_size=2)[0])
    assert np.isfinite(kernel_inception_distance(rng.standard_normal((40, 4)), b,
                                                 subset_size=2)[0])
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(a[:1], b)


# ----------------------------------------------------------------------------- FID bootstrap
def test_fid_bootstrap_interval():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 4))
    fake = rng.standard_normal((200, 4)) + 0.5
    ci = fid_bootstrap(fake, ref, num_resamples=50, seed=0)
    from visualtok.metrics.fid import fid_from_features

    point = fid_from_features(fake, ref)
    assert ci["fid"] == pytest.approx(point) and ci["low"] < point < ci["high"]
    assert ci["high"] - point == pytest.approx(1.959964 * ci["std"], rel=1e-5)
    assert ci["resampled"] == "samples and reference"
    assert ci == fid_bootstrap(fake, ref, num_resamples=50, seed=0)
    # identical sets: FID 0, yet every resample (with duplicates) is above it - the small-N bias
    # that a percentile interval would present as the interval itself
    same = fid_bootstrap(ref, ref, num_resamples=20)
    assert same["fid"] == pytest.approx(0, abs=1e-9) and same["low"] == 0
    assert same["resampled_mean"] > 0.01
    with pytest.raises(ValueError, match="num_resamples"):
        fid_bootstrap(fake, ref, num_resamples=1)


def test_fid_through_features_equals_the_covariance_formula():
    """The fast forms (N x N cross products, no D x D eigendecompositions) give the same FID."""
    from visualtok.metrics.fid import (
        _fid_features_vs_root,
        _sqrt_psd,
        feature_statistics,
        fid_from_features,
        frechet_distance,
    )

    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 64))
    b = 1.3 * rng.standard_normal((41, 64)) + 0.2
    sa, sb = feature_statistics(a), feature_statistics(b)
    exact = frechet_distance(sa, sb)
    # N < D: rank-deficient covariances, whose ~0 eigenvalues add sqrt(rounding) noise to the
    # eigendecomposition form; the cross-product form has none. They agree to ~1e-8 relative.
    assert fid_from_features(a, b) == pytest.approx(exact, rel=1e-7)
    assert fid_from_features(a, sb) == exact
    assert _fid_features_vs_root(a, sb, _sqrt_psd(sb.sigma)) == pytest.approx(exact, rel=1e-7)
    ci = fid_bootstrap(a, sb, num_resamples=30)
    assert ci["resampled"] == "samples" and ci["low"] < ci["high"]


# ----------------------------------------------------------------------------- make-ref, errors
def test_gfid_make_ref_then_score_with_kid_and_ci(tmp_path, class_folder):
    gfid = _script("gfid")
    ext = RandomTinyFeatures(feature_dim=8)
    ref = tmp_path / "ref.npz"
    made = gfid.main(["make-ref", str(class_folder), "--size", "32", "--max-images", "12",
                      "--out", str(ref), "--no-progress"], extractor=ext)
    assert made["num_samples"] == 12 and made["has_features"] and "evenly strided" in made["subset"]
    stats, feats = load_reference(ref, ext)
    assert stats.num_samples == 12 and feats.shape == (12, 8)
    res = gfid.main([str(class_folder), "--size", "32", "--reference", str(ref), "--bootstrap",
                     "20", "--out", str(tmp_path / "o"), "--no-progress"], extractor=ext)
    assert res["num_samples"] == 24 and res["reference_num_samples"] == 12
    assert res["kid_std"] is None and res["kid_num_subsets"] == 1 and res["kid_subset_size"] is None
    assert res["fid_ci"]["low"] <= res["fid_ci"]["high"] and "warning" not in res
    res = gfid.main([str(class_folder), "--size", "32", "--reference", str(ref),
                     "--kid-subset-size", "6", "--kid-subsets", "9",
                     "--out", str(tmp_path / "o2"), "--no-progress"], extractor=ext)
    assert res["kid_std"] is not None and res["kid_num_subsets"] == 9
    res = gfid.main([str(class_folder), "--size", "16", "--reference", str(ref),
                     "--out", str(tmp_path / "o3"), "--no-progress"], extractor=ext)
    assert "different resolutions" in res["warning"]


def test_bad_reference_files_give_errors_naming_them(tmp_path, class_folder, capsys):
    gfid, common = _script("gfid"), _script("_common")
    ext = RandomTinyFeatures(feature_dim=8)
    (tmp_path / "garbage.npz").write_bytes(b"\x00not an npz at all")
    np.savez(tmp_path / "keys.npz", something=np.zeros(3))
    np.savez(tmp_path / "nan.npz", mu=np.full(8, np.nan), sigma=np.eye(8))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(8), sigma=np.eye(5))
    np.save(tmp_path / "single.npy", np.zeros(3))
    save_reference(tmp_path / "other.npz", np.random.default_rng(0).standard_normal((10, 16)),
                   "random-tiny-16-seed0")
    cases = {"garbage.npz": "not a readable", "keys.npz": "neither", "nan.npz": "NaN",
             "shape.npz": "sigma", "single.npy": "expected an .npz", "other.npz": "features"}
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match) as e:
            load_reference(tmp_path / name, ext)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_reference(tmp_path / "missing.npz")
    # the script reads the reference before extracting any sample feature; one line, no traceback
    rc = common.run_cli(lambda: gfid.main([str(class_folder), "--reference",
                                           str(tmp_path / "garbage.npz"), "--out",
                                           str(tmp_path / "o")], extractor=ext), "gfid.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "garbage.npz" in err[0]
    assert err[0].startswith("gfid.py: error:")
    with pytest.raises(ValueError, match=r"\.npz"):
        gfid.main(["make-ref", str(class_folder), "--out", str(tmp_path / "ref.txt")],
                  extractor=ext)
