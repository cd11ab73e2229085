"""The training loop on a tiny TiTok: loss goes down, strict configs, options that change things."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import tiny_config, write_config, write_photos

from visualtok.train import load_train_config, run_training
from visualtok.train.config import NestedDropoutConfig, RobustnessConfig
from visualtok.train.tokenizer_task import robustness_schedule, sample_prefix_lengths
from visualtok.train.trainer import Trainer


@pytest.fixture
def photos_dir(tmp_path, real_photos):
    return write_photos(tmp_path / "photos", real_photos)


def _trainer(tmp_path, photos_dir, **sections) -> Trainer:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(photos_dir, tmp_path / "out", **sections))
    return Trainer(load_train_config(cfg))


def test_loss_goes_down_and_model_loads(tmp_path, photos_dir):
    import visualtok

    tr = _trainer(
        tmp_path,
        photos_dir,
        trainer={"steps": 40, "ckpt_every": 40, "batch_size": 4},
        optim={"lr": 3e-3, "warmup_steps": 5},
    )
    out = tr.fit()
    rec = [h["loss/reconstruction"] for h in tr.history]
    assert len(rec) == 40
    assert sum(rec[-5:]) / 5 < 0.6 * sum(rec[:5]) / 5, rec
    model = visualtok.load(out / "model")  # save_pretrained at the end
    x = torch.rand(2, 3, 32, 32)
    assert model.reconstruct(x).shape == (2, 3, 32, 32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tr.task.model.state_dict()[k])


def test_gan_ema_tensorboard_run(tmp_path, photos_dir):
    tr = _trainer(
        tmp_path,
        photos_dir,
        loss={"gan_weight": 0.5, "gan_start_step": 2, "lecam_weight": 0.01},
        trainer={
            "steps": 4,
            "ckpt_every": 4,
            "tensorboard": True,
            "image_every": 2,
            "ema": {"enabled": True, "decay": 0.9},
        },
    )
    out = tr.fit()
    steps_with_d = [h["step"] for h in tr.history if "loss/gan_d" in h]
    assert steps_with_d == [3, 4]  # delayed start: 0-based steps 2 and 3
    assert all("loss/gan_g" in h for h in tr.history if h["step"] > 2)
    assert list((out / "tensorboard").glob("events.*"))
    ema = tr.ema.shadow
    live = tr.task.model.state_dict()
    assert any(not torch.equal(ema[k], live[k]) for k in live if live[k].is_floating_point())


def test_config_errors(tmp_path, photos_dir):
    base = tiny_config(photos_dir, tmp_path / "out")
    bad = dict(base, trainer=dict(base["trainer"], stpes=3))
    with pytest.raises(ValueError, match="stpes"):
        load_train_config(write_config(tmp_path / "a.yaml", bad))
    with pytest.raises(ValueError, match="lr_typo"):
        load_train_config(write_config(tmp_path / "b.yaml", dict(base, optim={"lr_typo": 1})))
    bad_loss = dict(base, loss={"recon": "l2"})
    with pytest.raises(ValueError, match="recon"):
        Trainer(load_train_config(write_config(tmp_path / "c.yaml", bad_loss)))
    missing = dict(base, data=dict(base["data"], path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_training(write_config(tmp_path / "d.yaml", missing))
    (tmp_path / "empty").mkdir()
    empty = dict(base, data=dict(base["data"], path=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="empty dataset"):
        run_training(write_config(tmp_path / "e.yaml", empty))
    with pytest.raises(ValueError, match="unknown task"):
        Trainer(load_train_config(write_config(tmp_path / "f.yaml", dict(base, task="nope"))))
    cfg = load_train_config(write_config(tmp_path / "g.yaml", base), {"trainer.steps": 3})
    assert cfg.trainer.steps == 3


def test_env_data_path(tmp_path, photos_dir, monkeypatch):
    monkeypatch.setenv("VISUALTOK_DATA", str(photos_dir))
    cfg = load_train_config("configs/titok_tiny.yaml", {"trainer.steps": 1})
    assert cfg.data.path == str(photos_dir)


def test_nested_dropout_decodes_prefixes(tmp_path, photos_dir):
    tr = _trainer(
        tmp_path,
        photos_dir,
        trainer={
            "steps": 3,
            "batch_size": 4,
            "ckpt_every": 3,
            "nested_dropout": {"enabled": True, "distribution": "uniform", "per_sample": True},
        },
    )
    seen = []
    orig = tr.task.model.decode_latents
    tr.task.model.decode_latents = lambda z: (seen.append(z.shape[1]), orig(z))[1]
    tr.fit()
    assert any(k < 16 for k in seen) and all(1 <= k <= 16 for k in seen)
    keep = sample_prefix_lengths(NestedDropoutConfig(distribution="pow2", per_sample=True), 16, 64)
    assert set(keep.tolist()) <= {1, 2, 4, 8, 16} and len(set(keep.tolist())) > 2
    one = sample_prefix_lengths(NestedDropoutConfig(per_sample=False), 16, 8)
    assert len(set(one.tolist())) == 1
    off = sample_prefix_lengths(NestedDropoutConfig(prob=0.0), 16, 8)
    assert (off == 16).all()


def test_robustness_perturbs_codes(tmp_path, photos_dir):
    r = RobustnessConfig(
        enabled=True,
        rate_start=0.0,
        rate_end=0.8,
        strength_start=2,
        strength_end=6,
        start_step=10,
        end_step=20,
    )
    assert robustness_schedule(r, 0, 100) == (0.0, 2)
    assert robustness_schedule(r, 15, 100) == pytest.approx((0.4, 4))
    assert robustness_schedule(r, 50, 100) == pytest.approx((0.8, 6))
    tr = _trainer(
        tmp_path,
        photos_dir,
        trainer={
            "steps": 2,
            "ckpt_every": 2,
            "robustness": {
                "enabled": True,
                "rate_start": 1.0,
                "rate_end": 1.0,
                "strength_start": 8,
                "strength_end": 8,
            },
        },
    )
    tr.fit()
    frac = [h["robust/perturbed_fraction"] for h in tr.history]
    assert all(f > 0.5 for f in frac), frac
    # the decoder saw perturbed latents while the encoder still gets gradients (unchanged tokens)
    step = tr.task.modules["model"]
    x = torch.rand(2, 3, 32, 32)
    recon_p, quant, changed = step(x, rate=1.0, strength=8)
    recon_c, _, _ = step(x, rate=0.0)
    assert changed.float().mean() > 0.5 and not torch.allclose(recon_p, recon_c)


def test_nested_dropout_needs_prefix_tokenizer(tmp_path, photos_dir):
    from visualtok.train.tokenizer_task import TokenizerTask

    cfg = load_train_config(
        write_config(
            tmp_path / "c.yaml",
            tiny_config(photos_dir, tmp_path / "o", trainer={"nested_dropout": {"enabled": True}}),
        )
    )

    class Flat(torch.nn.Module):
        supports_prefix, token_shape = False, (4, 4)
        encode_latents = decode_latents = quantize = last_layer_weight = None

    with pytest.raises(ValueError, match="supports_prefix"):
        TokenizerTask(Flat(), TokenizerTask.loss_config_class(), cfg)
    with pytest.raises(TypeError, match="ImageTokenizer"):
        TokenizerTask(torch.nn.Linear(2, 2), TokenizerTask.loss_config_class(), cfg)


def test_proxy_code_loss_learns_teacher_codes(tmp_path, photos_dir):
    """Two-stage stage 1: cross-entropy against a frozen teacher's codes goes down."""
    tr = _trainer(
        tmp_path,
        photos_dir,
        model={"overrides": {"decoder_head": "proxy_codes", "proxy_codebook_size": 16}},
        trainer={"steps": 1, "ckpt_every": 1},
        optim={"lr": 3e-3, "warmup_steps": 0},
    )

    class Teacher(torch.nn.Module):  # stands in for MaskGIT-VQGAN: one code per 8x8 patch
        def encode(self, images):
            return (images.mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2)) * 15.99).long()[
                ..., None
            ]

    task = tr.task
    task.teacher = Teacher()
    images = torch.stack([tr.dataset[i]["image"] for i in range(4)])
    opt = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    losses = []
    for step in range(10):
        out = task.compute_loss("model", {"image": images}, step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.logs["loss/reconstruction"]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert task._recon is None and not task.is_active("discriminator", 0)
    with pytest.raises(ValueError, match="proxy-code"):
        _trainer(tmp_path, photos_dir, loss={"proxy_teacher": str(tmp_path)})
