"""Training data: resumable sampler, image folders, tar shards, audio and video clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visualtok.data import ResumableSampler, build_dataset
from visualtok.data.audio import AudioFolderDataset
from visualtok.data.images import ImageFolderDataset
from visualtok.data.shards import ImageShardDataset, write_image_shards
from visualtok.data.video import VideoClipDataset
from visualtok.train.config import DataConfig


@pytest.fixture
def image_folder(tmp_path, real_photos):
    root = tmp_path / "imgs"
    for i, img in enumerate(real_photos):
        sub = root / ("a" if i < 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr[: 96 + 8 * i]).save(sub / f"img{i}.png")  # non-square sizes
    return root


def test_sampler_resume_and_rank_shards():
    s = ResumableSampler(10, seed=3)
    full = [next(iter(s))]  # iteration does not move the saved position
    assert next(iter(s)) == full[0]
    order = list(s)
    s.advance(4)
    state = s.state_dict()
    s2 = ResumableSampler(10, seed=3)
    s2.load_state_dict(state)
    assert list(s2) == order[4:]
    s2.next_epoch()
    assert [i for i, _ in s2] != [i for i, _ in order]  # a new permutation each epoch
    r0 = [i for i, _ in ResumableSampler(10, seed=3, rank=0, world_size=2)]
    r1 = [i for i, _ in ResumableSampler(10, seed=3, rank=1, world_size=2)]
    assert sorted(r0 + r1) == list(range(10))
    with pytest.raises(ValueError, match="different data path"):
        ResumableSampler(11, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="processes"):
        ResumableSampler(10, seed=3, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="non-empty"):
        ResumableSampler(0)
    assert len(ResumableSampler(3, min_per_rank=8)) == 8  # tiny sets fill one batch


def test_image_folder_deterministic_crops(image_folder):
    ds = ImageFolderDataset(image_folder, 32, train=True, resize_short=48)
    assert len(ds) == 4
    a, b, c = ds[(1, 123)], ds[(1, 123)], ds[(1, 124)]
    assert a["image"].shape == (3, 32, 32) and a["index"] == 1
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])
    ev = ImageFolderDataset(image_folder, 32, train=False, resize_short=48)
    assert torch.equal(ev[(1, 123)]["image"], ev[(1, 999)]["image"])  # eval: centre crop
    assert 0 <= float(a["image"].min()) and float(a["image"].max()) <= 1


def test_missing_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(DataConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="empty dataset"):
        build_dataset(DataConfig(path=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="data.path is not set"):
        build_dataset(DataConfig(path=None))
    with pytest.raises(ValueError, match="data.type"):
        build_dataset(DataConfig(type="csv", path=str(tmp_path)))


def test_shards_round_trip(image_folder, tmp_path):
    shards = write_image_shards(image_folder, tmp_path / "sh" / "train-%03d.tar", max_per_shard=3)
    assert [p.name for p in shards] == ["train-000.tar", "train-001.tar"]
    ds = ImageShardDataset(tmp_path / "sh", 32, train=False, resize_short=48)
    ref = ImageFolderDataset(image_folder, 32, train=False, resize_short=48)
    assert len(ds) == 4
    for i in range(4):
        assert torch.equal(ds[i]["image"], ref[i]["image"])  # PNG bytes are kept as-is
    assert [ds[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    brace = ImageShardDataset(str(tmp_path / "sh" / "train-{000..001}.tar"), 32)
    assert len(brace) == 4
    import webdataset as wds  # the same tars read by webdataset itself

    keys = [s["__key__"] for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)]
    assert len(keys) == 4
    with pytest.raises(ValueError, match="%-format"):
        write_image_shards(image_folder, tmp_path / "x.tar")
    with pytest.raises(FileNotFoundError, match="no tar shards"):
        ImageShardDataset(tmp_path / "nothing-*.tar", 32)


def test_audio_folder_resamples_and_crops(tmp_path):
    import soundfile as sf

    t = np.arange(8000) / 8000.0
    sf.write(tmp_path / "tone.wav", np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1), 8000)
    sf.write(tmp_path / "short.flac", np.zeros(1000), 8000)
    ds = AudioFolderDataset(tmp_path, sample_rate=16000, num_samples=4000, train=True)
    assert len(ds) == 2
    item = ds[(1, 5)]  # sorted: short.flac, tone.wav
    tone = ds[(1, 5)]["audio"]
    assert item["audio"].shape == (1, 4000) and torch.equal(tone, item["audio"])
    assert float(tone.abs().max()) > 0.5  # resampled 2 x 8000 -> 16000 samples, a real tone
    assert torch.equal(ds[(0, 1)]["audio"][:, 2000:], torch.zeros(1, 2000))  # zero padded
    (tmp_path / "silent").mkdir()
    with pytest.raises(ValueError, match="empty dataset"):
        AudioFolderDataset(tmp_path / "silent")


def test_video_frames_folder(tmp_path):
    clip = tmp_path / "clip0"
    clip.mkdir()
    for i in range(10):
        Image.fromarray(np.full((40, 50, 3), i * 20, np.uint8)).save(clip / f"{i:03d}.png")
    ds = VideoClipDataset(tmp_path, 32, num_frames=4, frame_stride=2, train=True)
    assert len(ds) == 1
    v = ds[(0, 7)]["video"]
    assert v.shape == (4, 3, 32, 32)
    steps = v[:, 0, 0, 0] * 255
    assert torch.allclose(steps[1:] - steps[:-1], torch.full((3,), 40.0), atol=1.0)  # stride 2
    with pytest.raises(ValueError, match="empty dataset"):
        VideoClipDataset(tmp_path, 32, num_frames=20)


def test_random_resized_crop_scale_range():
    from visualtok.data.images import random_crop_resize
    from visualtok.data.sampler import item_generator

    img = torch.rand(3, 200, 300)
    outs = [random_crop_resize(img, 64, item_generator(s), flip=True, scale_range=(0.4, 1.0))
            for s in range(4)]
    assert all(o.shape == (3, 64, 64) for o in outs)
    assert not torch.equal(outs[0], outs[1])  # a different crop per seed ...
    again = random_crop_resize(img, 64, item_generator(0), flip=True, scale_range=(0.4, 1.0))
    assert torch.equal(outs[0], again)  # ... and the same one for the same seed (exact resume)
    # eval (no generator) ignores the augmentation: centre crop
    assert torch.equal(random_crop_resize(img, 64, None, resize_short=64, scale_range=(0.4, 1.0)),
                       random_crop_resize(img, 64, None, resize_short=64))
    with pytest.raises(ValueError, match="scale_range"):
        random_crop_resize(img, 64, item_generator(0), scale_range=(0.0, 1.0))
