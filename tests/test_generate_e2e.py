"""End to end on CPU: real photos -> titok_tiny codes -> token shards -> GPT training on the shared
trainer (loss falls) -> sampling -> decoded images / ADM npz; MaskGIT on the same tokens."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import train_gpt_tiny_on_tokens

import visualtok
from visualtok.data.image_io import list_images, save_image
from visualtok.generate.maskgit import generate_maskgit, mask_ratio, random_mask
from visualtok.generate.pipeline import generate_images
from visualtok.generate.tokens import TokenDataset, labels_from_folders, pretokenize_images

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory, real_photos):
    """Four photos in two class folders, a random titok_tiny, and its token shards."""
    root = tmp_path_factory.mktemp("gen")
    photos = torch.nn.functional.interpolate(real_photos, size=(64, 64), mode="area")
    for i, img in enumerate(photos):
        save_image(img, root / "images" / ("a" if i < 2 else "b") / f"{i}.png")
    files = list_images(root / "images")
    labels, classes = labels_from_folders(root / "images", files)
    tok = visualtok.create_model("titok_tiny").eval()
    written = pretokenize_images(
        tok, files, root / "tokens", labels, classes, batch_size=2, shard_size=3
    )
    return root, tok, files, labels, classes, written


def test_pretokenize_shards_are_exact_and_resumable(token_setup):
    root, tok, files, labels, classes, written = token_setup
    assert [p.name for p in written] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert classes == ["a", "b"] and labels == [0, 0, 1, 1]
    ds = TokenDataset(root / "tokens")
    from visualtok.data.image_io import iter_image_batches

    images = torch.cat(list(iter_image_batches(files, (64, 64), 4)))
    assert torch.equal(ds.codes, tok.encode(images))  # the shards hold the tokenizer's codes
    assert ds[3]["label"] == 1 and ds.layout == tok.code_layout
    # resumable: finished shards are skipped; process 1 of 2 writes only its own shard
    assert pretokenize_images(tok, files, root / "tokens", labels, classes, shard_size=3) == []
    (root / "tokens" / "shard-00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shards missing"):
        TokenDataset(root / "tokens")
    again = pretokenize_images(
        tok, files, root / "tokens", labels, classes, shard_size=3, process_index=1, num_processes=2
    )
    assert [p.name for p in again] == ["shard-00001.safetensors"]
    assert torch.equal(TokenDataset(root / "tokens").codes, ds.codes)


def test_train_sample_decode(token_setup, tmp_path):
    root, tok, *_ = token_setup
    _, model_dir, (first, last) = train_gpt_tiny_on_tokens(
        root / "tokens", tmp_path / "run", steps=60, batch_size=4,
        radices=[1024], num_tokens=32, num_classes=2)
    assert first > 5.0 and last < 0.5 * first, (first, last)  # starts near log(1024) = 6.93

    gpt = visualtok.load(model_dir)
    assert gpt.config.class_names == ("a", "b")  # from the token folder, saved with the model
    g = torch.Generator().manual_seed(0)
    imgs = generate_images(gpt, tok, torch.tensor([0, 1]), generator=g, cfg_scale=2.0, top_k=50)
    assert imgs.shape == (2, 3, 64, 64) and 0 <= imgs.min() and imgs.max() <= 1
    prefix = generate_images(gpt, tok, torch.tensor([1]), num_tokens=8, generator=g)
    assert prefix.shape == (1, 3, 64, 64)  # titok decodes a prefix of its 1D tokens
    # the saved model (eval mode, no label dropout) fits the training tokens
    ds = TokenDataset(root / "tokens")
    with torch.no_grad():
        assert gpt(ds.codes, ds.labels).loss < 0.5 * np.log(1024)

    spec = importlib.util.spec_from_file_location("sample_script", REPO / "eval" / "sample.py")
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    tok.save_pretrained(tmp_path / "tok")
    sample.main(
        [
            "--gpt",
            str(model_dir),
            "--tokenizer",
            str(tmp_path / "tok"),
            "--out",
            str(tmp_path / "samples"),
            "--num-samples",
            "4",
            "--batch-size",
            "2",
            "--cfg-scale",
            "1.5",
            "--device",
            "cpu",
        ]
    )
    npz = np.load(tmp_path / "samples" / "samples.npz")
    assert npz["arr_0"].shape == (4, 64, 64, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == [0, 1, 0, 1]  # class balanced
    assert len(list((tmp_path / "samples" / "images").glob("*.png"))) == 4


def test_maskgit_trains_and_samples_on_tokens(token_setup):
    root, tok, *_ = token_setup
    ds = TokenDataset(root / "tokens")
    gpt = visualtok.create_model("gpt_tiny", causal=False, num_classes=2, class_dropout=0.0)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        mask = random_mask(4, 32, "arccos", g)
        loss = gpt(ds.codes, ds.labels, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    gpt.eval()
    codes = generate_maskgit(gpt, torch.tensor([0, 1]), num_steps=6, generator=g, cfg_scale=2.0)
    assert codes.shape == (2, 32, 1)
    imgs = generate_images(gpt, tok, torch.tensor([0]), sampler="maskgit", num_steps=4)
    assert imgs.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="bidirectional"):
        generate_maskgit(visualtok.create_model("gpt_tiny"), torch.tensor([0]))
    assert mask_ratio(0.0) == 1.0 and mask_ratio(1.0, "cosine") < 1e-6


def test_random_mask_counts():
    m = random_mask(256, 32, "cosine", torch.Generator().manual_seed(0))
    n = m.sum(-1)
    assert n.min() >= 1 and n.max() <= 32 and m.dtype == torch.bool
    assert 10 < n.float().mean() < 26  # E[cos(pi/2 r)] * 32 ~ 20


def _script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pretokenize_and_train_generator_scripts(token_setup, tmp_path):
    root, tok, *_ = token_setup
    tok.save_pretrained(tmp_path / "tok")
    pre = _script(REPO / "train" / "pretokenize.py")
    written = pre.main(
        [
            "--tokenizer",
            str(tmp_path / "tok"),
            "--images",
            str(root / "images"),
            "--out",
            str(tmp_path / "tokens"),
            "--shard-size",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert len(written) == 2
    assert torch.equal(TokenDataset(tmp_path / "tokens").codes, TokenDataset(root / "tokens").codes)
    # --limit takes an evenly strided subset: both class folders, not the first class only
    pre.main(["--tokenizer", str(tmp_path / "tok"), "--images", str(root / "images"), "--out",
              str(tmp_path / "tokens2"), "--limit", "2", "--device", "cpu"])
    assert TokenDataset(tmp_path / "tokens2").labels.tolist() == [0, 1]
    train = _script(REPO / "train" / "train_generator.py")
    out = train.main(
        [
            "--config",
            str(REPO / "configs" / "gpt_tiny.yaml"),
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            f"data.path={tmp_path / 'tokens'}",
            "--set",
            "trainer.steps=3",
            "--set",
            "trainer.batch_size=2",
            "--set",
            "trainer.tensorboard=false",
            "--set",
            "trainer.progress=false",
            "--set",
            "model.overrides.num_classes=2",
        ]
    )
    gpt = visualtok.load(Path(out) / "model")
    assert gpt.config.num_classes == 2 and gpt.code_layout == tok.code_layout
    with pytest.raises(ValueError, match="code layout"):
        train.main(
            [
                "--config",
                str(REPO / "configs" / "gpt_tiny.yaml"),
                "--device",
                "cpu",
                "--output-dir",
                str(tmp_path / "run2"),
                "--set",
                f"data.path={tmp_path / 'tokens'}",
                "--set",
                "model.overrides.radices=[4096]",
            ]
        )
