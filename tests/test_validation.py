"""Bad input is refused by our code with an error naming the field or file and the expected form,
before anything is written: configs of every model and the trainer, files read through other
libraries, sampling parameters, empty batches, training data of the wrong size, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from _train_helpers import tiny_config, write_config, write_photos
from PIL import Image
from safetensors.torch import save_file

from visualtok import cli
from visualtok.config import config_from_dict, load_config, load_json, load_yaml
from visualtok.generate.sampling import SamplingConfig
from visualtok.generate.tokens import TokenDataset, read_codes_file
from visualtok.quantize import QuantizerConfig
from visualtok.registry import create_model
from visualtok.train import load_train_config
from visualtok.train.config import TrainerConfig
from visualtok.train.trainer import Trainer

NAN = float("nan")
SMALL = dict(image_size=32, encoder_width=32, decoder_width=32, num_latent_tokens=4,
             encoder_heads=2, decoder_heads=2)


# ----------------------------------------------------------------------------- model configs
@pytest.mark.parametrize(
    "overrides,exc,field",
    [
        (dict(num_latent_tokens=0), ValueError, "num_latent_tokens"),
        (dict(num_latent_tokens=-4), ValueError, "num_latent_tokens"),
        (dict(num_latent_tokens=8.0), TypeError, "num_latent_tokens"),
        (dict(patch_size="8"), TypeError, "patch_size"),
        (dict(patch_size=0), ValueError, "patch_size"),
        (dict(image_size=-64), ValueError, "image_size"),
        (dict(image_size=60), ValueError, "patch_size"),
        (dict(encoder_heads=0), ValueError, "encoder_heads"),
        (dict(decoder_heads=5), ValueError, "decoder_heads"),
        (dict(encoder_depth=0), ValueError, "encoder_depth"),
        (dict(mlp_ratio=NAN), ValueError, "mlp_ratio"),
        (dict(mlp_ratio="4"), TypeError, "mlp_ratio"),
        (dict(token_size=True), TypeError, "token_size"),
        (dict(is_legacy="yes"), TypeError, "is_legacy"),
        (dict(mode="vqgan"), ValueError, "mode"),
        (dict(decoder_head="rgb"), ValueError, "decoder_head"),
        (dict(kl_weight=-1.0), ValueError, "kl_weight"),
        (dict(quantizer="vq"), TypeError, "quantizer"),
        (dict(quantizer=[1, 2]), TypeError, "quantizer"),
        (dict(quantizer=dict(type="fsq", levels=[8, 5.5])), TypeError, "levels"),
        (dict(quantizer=dict(type="fsq", levels=[8, 1])), ValueError, "levels"),
        (dict(quantizer=dict(type="fsq", levels=[])), ValueError, "levels"),
        (dict(quantizer=dict(type="vq", ema=True, ema_decay=1.5)), ValueError, "ema_decay"),
        (dict(quantizer=dict(type="vq", ema=True, ema_decay=0.0)), ValueError, "ema_decay"),
        (dict(quantizer=dict(type="vq", codebook_size=1)), ValueError, "codebook_size"),
        (dict(quantizer=dict(type="vq", codebook_size="1024")), TypeError, "codebook_size"),
        (dict(quantizer=dict(type="vq", beta=-0.25)), ValueError, "beta"),
        (dict(quantizer=dict(type="vq", chunk_size=0)), ValueError, "chunk_size"),
        (dict(quantizer=dict(type="vq", bogus=1)), ValueError, "bogus"),
        (dict(quantizer=dict(type="lfq", dim=12, group_size=5)), ValueError, "group_size"),
        (dict(bogus_key=1), ValueError, "bogus_key"),
    ],
)
def test_titok_config_errors(overrides, exc, field):
    with pytest.raises(exc, match=field):
        create_model("titok_tiny", **overrides)


@pytest.mark.parametrize(
    "kwargs,exc,field",
    [
        (dict(type="rvq", num_quantizers=0), ValueError, "num_quantizers"),
        (dict(type="rvq", quantizer_dropout=1.5), ValueError, "quantizer_dropout"),
        (dict(type="ptq", bins=1), ValueError, "bins"),
        (dict(type="ptq", value_range=0.0), ValueError, "value_range"),
        (dict(type="lfq", dim=16, entropy_temperature=0.0), ValueError, "entropy_temperature"),
        (dict(type="fsq", dim=3, levels=(8, 5)), ValueError, "len\\(levels\\)"),
        (dict(type="vq", dim=0), ValueError, "dim"),
        (dict(type="vq", codebook_dim=0), ValueError, "codebook_dim"),
        (dict(type="vq", kmeans_iters=2.5), TypeError, "kmeans_iters"),
        (dict(type="vq", l2_normalize=1), TypeError, "l2_normalize"),
    ],
)
def test_quantizer_config_errors(kwargs, exc, field):
    with pytest.raises(exc, match=field):
        QuantizerConfig(**kwargs)
    with pytest.raises(exc, match=field):  # and through a dict, as YAML / config.json give it
        config_from_dict(QuantizerConfig, dict(kwargs))


@pytest.mark.parametrize(
    "overrides,exc,field",
    [
        (dict(num_heads=0), ValueError, "num_heads"),
        (dict(num_heads=3), ValueError, "num_heads"),
        (dict(dim="64"), TypeError, "dim"),
        (dict(num_tokens=0), ValueError, "num_tokens"),
        (dict(num_layers=-1), ValueError, "num_layers"),
        (dict(class_dropout=1.0), ValueError, "class_dropout"),
        (dict(num_classes=-1), ValueError, "num_classes"),
        (dict(radices=[1]), ValueError, "radices"),
        (dict(radices=[4.5]), TypeError, "radices"),
        (dict(radices=[]), ValueError, "radices"),
        (dict(head="flatt"), ValueError, "head"),
        (dict(rope_base=NAN), ValueError, "rope_base"),
        (dict(norm_eps=0.0), ValueError, "norm_eps"),
        (dict(factor_head_heads=3), ValueError, "factor_head_heads"),
        (dict(layout_kind="bits"), ValueError, "layout_kind"),
    ],
)
def test_gpt_config_errors(overrides, exc, field):
    with pytest.raises(exc, match=field):
        create_model("gpt_tiny", **overrides)


@pytest.mark.parametrize(
    "name,overrides,exc,field",
    [
        ("vqgan_tiny", dict(channels="64"), TypeError, "channels"),
        ("vqgan_tiny", dict(channels=0), ValueError, "channels"),
        ("vqgan_tiny", dict(encoder_ch_mult=[1, 2.5]), TypeError, "encoder_ch_mult"),
        ("vqgan_tiny", dict(num_res_blocks=0), ValueError, "num_res_blocks"),
        ("vqgan_tiny", dict(dropout=NAN), ValueError, "dropout"),
        ("vqgan_tiny", dict(quantizer="vq"), TypeError, "quantizer"),
        ("vqgan_tiny", dict(image_size=-8), ValueError, "image_size"),
        ("retok_tiny", dict(num_latent_tokens=0), ValueError, "num_latent_tokens"),
        ("retok_tiny", dict(encoder_heads=3), ValueError, "encoder_heads"),
        ("retok_tiny", dict(decoder_heads=0), ValueError, "decoder_heads"),
        ("retok_tiny", dict(mlp_ratio="4"), TypeError, "mlp_ratio"),
        ("retok_tiny", dict(redundant_from=-1), ValueError, "redundant_from"),
        ("retok_tiny", dict(distill_depth=0), ValueError, "distill_depth"),
        ("retok_tiny", dict(quantizer=dict(type="vq", ema=True, ema_decay=1.0)), ValueError,
         "ema_decay"),
    ],
)
def test_cnn_tokenizer_config_errors(name, overrides, exc, field):
    with pytest.raises(exc, match=field):
        create_model(name, **overrides)


@pytest.mark.parametrize(
    "kwargs,exc,field",
    [
        (dict(num_registers=0), ValueError, "num_registers"),
        (dict(patch_size="2"), TypeError, "patch_size"),
        (dict(levels=[8, 5.5]), TypeError, "levels"),
        (dict(head_dim=0), ValueError, "head_dim"),
        (dict(cfg_dropout=1.5), ValueError, "cfg_dropout"),
        (dict(guidance_scale=NAN), ValueError, "guidance_scale"),
        (dict(null_condition="random"), ValueError, "null_condition"),
        (dict(adaln_expansion=3), ValueError, "adaln_expansion"),
        (dict(keep_sampling="log"), ValueError, "keep_sampling"),
        (dict(vae="sd-vae"), TypeError, "vae"),
        (dict(max_timestep=0.5), ValueError, "max_timestep"),
    ],
)
def test_flextok_config_errors(kwargs, exc, field):
    from visualtok.image.flextok import FlexTokConfig

    with pytest.raises(exc, match=field):
        FlexTokConfig(**kwargs)


def test_flextok_and_length_predictor_loss_configs():
    from visualtok.metrics.adaptive import LengthPredictorConfig
    from visualtok.train.flextok_task import FlexTokLossConfig, FlexTokVAELossConfig

    with pytest.raises(ValueError, match="repa_teacher"):
        FlexTokLossConfig(repa_teacher="dinov2")
    with pytest.raises(ValueError, match="kl_weight"):
        FlexTokVAELossConfig(kl_weight=-1.0)
    with pytest.raises(TypeError, match="calibrate_batches"):
        config_from_dict(FlexTokLossConfig, {"calibrate_batches": "4"})
    with pytest.raises(ValueError, match="num_tokens"):
        LengthPredictorConfig(num_tokens=0)


@pytest.mark.parametrize(
    "cls,kwargs,exc,field",
    [
        ("dac", dict(encoder_dim=0), ValueError, "encoder_dim"),
        ("dac", dict(encoder_rates=[2, 4.5]), TypeError, "encoder_rates"),
        ("dac", dict(quantizer_dropout=1.5), ValueError, "quantizer_dropout"),
        ("dac", dict(codebook_size=1), ValueError, "codebook_size"),
        ("encodec", dict(sample_rate="24000"), TypeError, "sample_rate"),
        ("encodec", dict(ratios=[8, 0]), ValueError, "ratios"),
        ("encodec", dict(target_bandwidths=[1.5, NAN]), ValueError, "target_bandwidths"),
        ("encodec", dict(quantizer="rvq"), TypeError, "quantizer"),
        ("encodec", dict(lstm_layers=-1), ValueError, "lstm_layers"),
        ("encodec", dict(pad_mode="mirror"), ValueError, "pad_mode"),
        ("encodec", dict(norm="batch_norm"), ValueError, "norm"),
    ],
)
def test_audio_codec_config_errors(cls, kwargs, exc, field):
    from visualtok.audio.dac import DACConfig
    from visualtok.audio.encodec import EncodecConfig

    with pytest.raises(exc, match=field):
        {"dac": DACConfig, "encodec": EncodecConfig}[cls](**kwargs)


@pytest.mark.parametrize("name", ["titok_tiny", "titok3d_tiny"])
@pytest.mark.parametrize(
    "overrides,exc,field",
    [
        (dict(quantizer="fsq"), TypeError, "quantizer"),
        (dict(quantizer=3), TypeError, "quantizer"),
        (dict(quantizer=["vq"]), TypeError, "quantizer"),
        (dict(token_size=0), ValueError, "token_size"),
        (dict(token_size="4"), TypeError, "token_size"),
    ],
)
def test_1d_tokenizer_presets_check_their_overrides(name, overrides, exc, field):
    """A preset's ``quantizer`` / ``token_size`` overrides are checked by our code and named,
    for the image and the video 1D tokenizers alike (one merge rule)."""
    with pytest.raises(exc, match=field):
        with torch.device("meta"):
            create_model(name, **overrides)


def test_gpt_class_names_error_names_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        create_model("gpt_tiny", num_classes=2, class_names=("a", "b", "c"))


def test_valid_configs_still_build_and_normalise():
    cfg = config_from_dict(QuantizerConfig, {"type": "fsq", "dim": 3, "levels": [8, 5, 5]})
    assert cfg.levels == (8, 5, 5)
    assert isinstance(config_from_dict(QuantizerConfig, {"beta": 1}).beta, float)
    assert create_model("titok_tiny", **SMALL).config.num_latent_tokens == 4


# ----------------------------------------------------------------------------- trainer configs
@pytest.mark.parametrize(
    "key,value,exc,field",
    [
        ("trainer.ckpt_every", 0, ValueError, "ckpt_every"),
        ("trainer.log_every", 0, ValueError, "log_every"),
        ("trainer.steps", "10", TypeError, "steps"),
        ("trainer.steps", 0, ValueError, "steps"),
        ("trainer.batch_size", 2.5, TypeError, "batch_size"),
        ("trainer.keep_last", 0, ValueError, "keep_last"),
        ("trainer.mixed_precision", "fp8", ValueError, "mixed_precision"),
        ("trainer.bogus", 1, ValueError, "bogus"),
        ("trainer.ema.decay", 1.0, ValueError, "decay"),
        ("trainer.ema.decay", NAN, ValueError, "decay"),
        ("trainer.nested_dropout.distribution", "log", ValueError, "distribution"),
        ("trainer.nested_dropout.prob", 2.0, ValueError, "prob"),
        ("trainer.robustness.strength_start", 0, ValueError, "strength_start"),
        ("optim.lr", -1e-4, ValueError, "lr"),
        ("optim.lr", "fast", TypeError, "lr"),
        ("optim.lr", math.inf, ValueError, "lr"),
        ("optim.betas", [0.9, 1.0], ValueError, "betas"),
        ("optim.betas", [0.9], ValueError, "betas"),
        ("optim.weight_decay", -0.1, ValueError, "weight_decay"),
        ("optim.grad_clip", 0.0, ValueError, "grad_clip"),
        ("optim.schedule", "linear", ValueError, "schedule"),
        ("optim.min_lr_ratio", 1.5, ValueError, "min_lr_ratio"),
        ("data.image_size", 0, ValueError, "image_size"),
        ("data.num_workers", -1, ValueError, "num_workers"),
        ("data.scale_range", [0.9, 0.5], ValueError, "scale_range"),
        ("loss.gan_weight", -1.0, ValueError, "gan_weight"),
        ("loss.reconstruction", "l3", ValueError, "reconstruction"),
        ("loss.lecam_decay", 1.0, ValueError, "lecam_decay"),
        ("loss.bogus", 1, ValueError, "bogus"),
        ("loss.perceptual_weight", 1.0, ValueError, "perceptual_weights"),
        ("loss.semantic_weight", -1.0, ValueError, "semantic_weight"),
        ("loss.semantic_min_ratio", 2.0, ValueError, "semantic_min_ratio"),
        ("task", "nope", ValueError, "task"),
        ("model", "titok_tiny", TypeError, "model"),
    ],
)
def test_train_config_errors(tmp_path, key, value, exc, field):
    with pytest.raises(exc, match=field) as e:
        load_train_config(None, {key: value})
    # a YAML recipe: the message names the file too, and nothing is written
    recipe = tmp_path / "recipe.yaml"
    data: dict = {"trainer": {"output_dir": str(tmp_path / "out")}}
    from visualtok.train.config import apply_overrides

    recipe.write_text(yaml.safe_dump(apply_overrides(data, {key: value})))
    with pytest.raises(exc, match=field) as e:
        load_train_config(recipe)
    assert str(e.value).startswith(f"{recipe}: ")
    assert not (tmp_path / "out").exists()


def test_perceptual_weights_file_must_exist(tmp_path):
    missing = tmp_path / "vgg.safetensors"
    with pytest.raises(FileNotFoundError, match="vgg.safetensors"):
        load_train_config(None, {"loss.perceptual_weight": 1.0,
                                 "loss.perceptual_weights": str(missing)})
    load_train_config(None, {"loss.perceptual_weight": 0.0})  # off: no weights needed


def test_semantic_teacher_must_be_registered():
    with pytest.raises(ValueError, match="semantic_teacher"):
        load_train_config(None, {"loss.semantic_weight": 0.5, "loss.semantic_teacher": "nope"})


def test_direct_construction_is_checked_too():
    with pytest.raises(ValueError, match="TrainerConfig.ckpt_every"):
        TrainerConfig(ckpt_every=0)
    cfg = TrainerConfig()
    cfg.log_every = 0  # mutated after construction: validate() catches it
    with pytest.raises(ValueError, match="log_every"):
        cfg.validate()


# ----------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def gpt():
    return create_model("gpt_tiny", num_tokens=4, num_layers=1).eval()


@pytest.mark.parametrize(
    "kwargs,exc,field",
    [
        (dict(temperature=NAN), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(cfg_scale=NAN), ValueError, "cfg_scale"),
        (dict(cfg_scale=math.inf), ValueError, "cfg_scale"),
        (dict(top_k=2.5), TypeError, "top_k"),
        (dict(top_k=-1), ValueError, "top_k"),
        (dict(top_p=NAN), ValueError, "top_p"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(cfg_power=NAN), ValueError, "cfg_power"),
        (dict(cfg_interval=(0.8, 0.2)), ValueError, "cfg_interval"),
        (dict(cfg_schedule="cosine"), ValueError, "cfg_schedule"),
        (dict(num_tokens=0), ValueError, "num_tokens"),
        (dict(num_tokens=2.5), TypeError, "num_tokens"),
        (dict(num_samples=1.5, labels=None), TypeError, "num_samples"),
    ],
)
def test_bad_sampling_parameters_never_reach_multinomial(gpt, kwargs, exc, field, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("torch.multinomial reached with bad sampling parameters")

    monkeypatch.setattr(torch, "multinomial", boom)
    kwargs = {"labels": torch.tensor([0]), **kwargs}
    with pytest.raises(exc, match=field):
        gpt.generate(**kwargs)
    options = {k: v for k, v in kwargs.items() if k in SamplingConfig.__annotations__}
    if options:  # the same refusal when the config is built directly
        with pytest.raises(exc, match=field):
            SamplingConfig(**options)


def test_generate_images_refuses_zero_tokens(gpt):
    from visualtok.generate.pipeline import generate_images

    tok = create_model("titok_tiny", **SMALL, quantizer=dict(type="vq", codebook_size=1024))
    with pytest.raises(ValueError, match="num_tokens"):
        generate_images(gpt, tok, labels=torch.tensor([0]), num_tokens=0)


def test_maskgit_checks_its_own_parameters():
    from visualtok.generate.maskgit import generate_maskgit

    model = create_model("gpt_tiny", num_tokens=4, num_layers=1, causal=False).eval()
    with pytest.raises(ValueError, match="choice_temperature"):
        generate_maskgit(model, torch.tensor([0]), choice_temperature=NAN)
    with pytest.raises(TypeError, match="num_steps"):
        generate_maskgit(model, torch.tensor([0]), num_steps=2.5)


# ----------------------------------------------------------------------------- batches
def test_empty_batches_are_refused_alike():
    model = create_model("titok_tiny", **SMALL).eval()
    with pytest.raises(ValueError, match="B >= 1"):
        model.encode(torch.rand(0, 3, 32, 32))
    with pytest.raises(ValueError, match="B >= 1"):
        model.decode(torch.zeros(0, 4, 1, dtype=torch.long))


def test_empty_code_batches_are_refused_by_the_generator(gpt):
    with pytest.raises(ValueError, match="at least one"):
        gpt(torch.zeros(0, 4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="num_samples"):
        gpt.generate(num_samples=0, labels=None)


def test_training_data_of_the_wrong_size_is_refused_before_training(tmp_path, real_photos):
    photos = write_photos(tmp_path / "photos", real_photos[:2])
    cfg = tiny_config(photos, tmp_path / "out")
    cfg["data"].update(image_size=24, resize_short=24)  # the model takes 32
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\].*data.image_size"):
        Trainer(load_train_config(write_config(tmp_path / "c.yaml", cfg)))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- files
def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_files_that_are_not_what_they_claim(tmp_path):
    from visualtok.data.image_io import load_image
    from visualtok.metrics.fid import FeatureStats, load_reference

    png = _write(tmp_path / "photo.png", b"this is not a picture")
    truncated = tmp_path / "cut.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "ok.png")
    _write(truncated, (tmp_path / "ok.png").read_bytes()[:60])
    bad_yaml = _write(tmp_path / "c.yaml", b"a: [1, 2\nb: }")
    binary_yaml = _write(tmp_path / "b.yaml", bytes(range(256)))
    bad_json = _write(tmp_path / "c.json", b"{'single': quotes}")
    list_yaml = _write(tmp_path / "l.yaml", b"- 1\n- 2\n")
    npy = tmp_path / "ref.npy"
    np.save(npy, np.zeros(3))
    nostats = tmp_path / "nostats.npz"
    np.savez(nostats, other=np.zeros(3))
    text_npz = _write(tmp_path / "ref.npz", b"not a zip")
    ckpt = tmp_path / "ckpt"
    create_model("titok_tiny", **SMALL).save_pretrained(ckpt)
    ckpt_list = tmp_path / "ckpt_list"
    create_model("titok_tiny", **SMALL).save_pretrained(ckpt_list)
    _write(ckpt / "config.json", bytes(range(200, 256)))
    _write(ckpt_list / "config.json", b"[1, 2]")
    ckpt_zero = tmp_path / "ckpt_zero"
    create_model("titok_tiny", **SMALL).save_pretrained(ckpt_zero)
    meta = json.loads((ckpt_zero / "config.json").read_text())
    meta["config"]["num_latent_tokens"] = 0
    (ckpt_zero / "config.json").write_text(json.dumps(meta))
    from visualtok.hub import load

    cases = [
        (lambda: load(ckpt), ckpt / "config.json"),
        (lambda: load(ckpt_list), ckpt_list / "config.json"),
        (lambda: load(ckpt_zero), ckpt_zero / "config.json"),
        (lambda: load_image(png), png),
        (lambda: load_image(truncated), truncated),
        (lambda: load_yaml(bad_yaml), bad_yaml),
        (lambda: load_yaml(binary_yaml), binary_yaml),
        (lambda: load_config(TrainerConfig, list_yaml), list_yaml),
        (lambda: load_json(bad_json), bad_json),
        (lambda: load_train_config(bad_yaml), bad_yaml),
        (lambda: load_reference(npy), npy),
        (lambda: load_reference(nostats), nostats),
        (lambda: load_reference(text_npz), text_npz),
        (lambda: FeatureStats.load(text_npz), text_npz),
    ]
    for fn, path in cases:
        with pytest.raises(ValueError) as e:
            fn()
        assert path.name in str(e.value), str(e.value)  # the file is named


def test_codes_files_and_token_folders(tmp_path):
    not_st = _write(tmp_path / "codes.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    no_codes = tmp_path / "other.safetensors"
    save_file({"tokens": torch.zeros(1, 4, 1, dtype=torch.long)}, no_codes)
    float_codes = tmp_path / "float.safetensors"
    save_file({"codes": torch.zeros(1, 4, 1)}, float_codes)
    for path, match in [(not_st, "not a safetensors"), (no_codes, "'codes'"),
                        (float_codes, "integer codes")]:
        with pytest.raises(ValueError, match=match) as e:
            read_codes_file(path)
        assert str(path) in str(e.value)
    folder = tmp_path / "tokens"
    folder.mkdir()
    _write(folder / "tokens.json", b"{not json")
    with pytest.raises(ValueError, match="tokens.json"):
        TokenDataset(folder)
    (folder / "tokens.json").write_text(json.dumps({"shards": []}))
    with pytest.raises(ValueError, match="code_layout"):
        TokenDataset(folder)


def test_official_config_that_is_not_json(tmp_path):
    from visualtok.convert.titok import titok_config_from_official

    bad = _write(tmp_path / "config.json", b"model: {vq_model: 1}")
    with pytest.raises(ValueError, match="config.json"):
        titok_config_from_official(bad)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Two random titok_tiny checkpoints with the same layout (different codebooks) and one with
    another layout."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for name, seed, overrides in [("a", 0, {}), ("b", 1, {}),
                                  ("other", 0, dict(quantizer=dict(type="vq", codebook_size=256)))]:
        torch.manual_seed(seed)
        out[name] = create_model("titok_tiny", **SMALL, **overrides).save_pretrained(root / name)
    return out


def _cli(capsys, *argv):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    return rc, err


def test_cli_decode_checks_the_recorded_layout(tmp_path, capsys, tiny_checkpoints):
    from visualtok.data.image_io import save_image

    img = tmp_path / "x.png"
    save_image(torch.rand(3, 32, 32), img)
    codes = tmp_path / "codes.safetensors"
    assert _cli(capsys, "encode", img, "--model", tiny_checkpoints["a"], "--out", codes)[0] == 0
    out = tmp_path / "d.png"
    assert _cli(capsys, "decode", codes, "--out", out)[0] == 0 and out.is_file()
    out.unlink()
    for model, match in [(tiny_checkpoints["other"], "code layout"),
                         (tiny_checkpoints["b"], "quantizer")]:
        rc, err = _cli(capsys, "decode", codes, "--model", model, "--out", out)
        assert rc != 0 and len(err.splitlines()) == 1 and match in err, err
        assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize(
    "argv,match",
    [
        (["generate", "--num-tokens", "0"], "--num-tokens"),
        (["generate", "--labels", "a,b"], "--labels"),
        (["decode", "{not_st}"], "not a safetensors"),
        (["decode", "{no_codes}"], "'codes'"),
        (["encode", "{bad_png}", "--out", "{out}"], "not a readable image"),
        (["reconstruct", "{bad_png}", "--out", "{out_dir}"], "not a readable image"),
        (["train", "{bad_yaml}"], "not a YAML"),
        (["train", "{zero_ckpt}"], "ckpt_every"),
        (["info", "--random-init", "titok_tiny_nope"], "unknown model"),
        (["encode", "{gray_png}", "--out", "{out}"], "'L' image, not RGB"),
        (["reconstruct", "{rgba_png}", "--out", "{out_dir}"], "'RGBA' image, not RGB"),
        (["generate", "--top-k", "2.5", "--out", "{out_dir}"], "invalid int value"),
        (["encode", "{gray_png}", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, match):
    paths = {
        "not_st": _write(tmp_path / "c.safetensors", b"garbage!"),
        "no_codes": tmp_path / "n.safetensors",
        "bad_png": _write(tmp_path / "bad.png", b"GIF89a but not really"),
        "bad_yaml": _write(tmp_path / "bad.yaml", b"trainer: [unclosed"),
        "zero_ckpt": _write(tmp_path / "z.yaml", b"trainer: {ckpt_every: 0}"),
        "gray_png": tmp_path / "gray.png",
        "rgba_png": tmp_path / "rgba.png",
        "out": tmp_path / "written.safetensors",
        "out_dir": tmp_path / "written",
    }
    save_file({"x": torch.zeros(1)}, paths["no_codes"])
    Image.new("L", (32, 32)).save(paths["gray_png"])
    Image.new("RGBA", (32, 32)).save(paths["rgba_png"])
    rc, err = _cli(capsys, *[a.format(**paths) for a in argv])
    assert rc != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not paths["out"].exists() and not paths["out_dir"].exists()


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
@pytest.mark.parametrize("media", ["image", "video"])
def test_cli_refuses_pictures_for_an_audio_codec(tmp_path, capsys, command, media):
    codec = create_model("codec_tiny").save_pretrained(tmp_path / "codec")
    src = tmp_path / ("x.png" if media == "image" else "x.mp4")
    if media == "image":
        Image.new("RGB", (32, 32)).save(src)
    else:
        _write(src, b"not decoded: refused before reading")
    out = tmp_path / ("w.safetensors" if command == "encode" else "w")
    rc, err = _cli(capsys, command, src, "--model", codec, "--out", out)
    assert rc != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"is {'an image' if media == 'image' else 'a video'} but Codec is an audio codec" in err
    assert not out.exists()


def test_pixels_of_another_size_cannot_be_trained_on(tmp_path, real_photos):
    """Legacy patch 8 + MaskGIT decoder decodes 32x32 inputs to 64x64: a pixel loss is refused."""
    photos = write_photos(tmp_path / "photos", real_photos[:2])
    cfg = tiny_config(photos, tmp_path / "out")
    cfg["model"]["overrides"].update(
        patch_size=8, is_legacy=True, decoder_head="proxy_codes", pixel_decoder=True,
        pixel_decoder_channels=32, proxy_codebook_size=16, proxy_code_dim=8)
    with pytest.raises(ValueError, match=r"decodes \(32, 32\) images to \(64, 64\)"):
        Trainer(load_train_config(write_config(tmp_path / "c.yaml", cfg)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "script,args,match",
    [
        ("train/train_tokenizer.py", ["--config", "configs/titok_tiny.yaml",
                                      "--set", "trainer.ckpt_every=0"], "ckpt_every"),
        pytest.param("eval/rfid.py",
                     ["titok_tiny", "{missing}", "--random-init", "--out", "{out}"], "missing",
                     marks=pytest.mark.slow),
    ],
)
def test_scripts_report_errors_in_one_line(tmp_path, script, args, match):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    fill = {"missing": tmp_path / "missing", "out": tmp_path / "out.json"}
    proc = subprocess.run(
        [sys.executable, str(repo / script), *[a.format(**fill) for a in args]],
        capture_output=True, text=True, cwd=repo, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(repo)},
    )
    lines = [ln for ln in proc.stderr.splitlines() if "Warning" not in ln and ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and match in lines[0], proc.stderr
    assert not fill["out"].exists()
