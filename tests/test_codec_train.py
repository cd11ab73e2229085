"""Training visualtok's codec (task ``codec``, configs/codec_tiny.yaml) on real speech: the mel loss
goes down, every level keeps several codes, resume is bit-exact, media and errors."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import shared_path
from safetensors.torch import load_file

from visualtok.data.audio import load_audio
from visualtok.train import load_train_config
from visualtok.train.codec_task import multiscale_mel_loss
from visualtok.train.trainer import Trainer

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _config(tmp_path, name: str, **trainer) -> str:
    cfg = yaml.safe_load((REPO / "configs" / "codec_tiny.yaml").read_text())
    cfg["data"].update(path=str(shared_path("data", "audio", "ljspeech_subset")), num_samples=4000)
    cfg["optim"].update(lr=2e-3, warmup_steps=2)
    cfg["trainer"].update({"steps": 8, "batch_size": 4, "output_dir": str(tmp_path / name),
                           "log_every": 1, "image_every": 0, "ckpt_every": 4, "progress": False,
                           "tensorboard": False, **trainer})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _held_out_mel(model, clip) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        rec = model.reconstruct(clip, 16000)
    model.train(was)
    return float(multiscale_mel_loss(rec, clip, 16000, (64, 256, 1024), (10, 40, 80)))


def test_codec_tiny_trains_on_speech_and_resumes_exactly(tmp_path):
    # 2 s of the training speech (LJ Speech), at 16 kHz: a few steps fit the training speaker
    clip = load_audio(shared_path("data", "audio", "ljspeech_subset", "LJ001-0001.wav"), 16000)
    clip = clip[None, :, 8000:40000].contiguous()
    tr = Trainer(load_train_config(_config(tmp_path, "a")))
    before = _held_out_mel(tr.task.model, clip)
    tr.fit()
    after = _held_out_mel(tr.task.model, clip)
    assert after < 0.95 * before, (before, after)  # measured: 0.773 -> 0.704
    h = tr.history
    assert {"loss/mel", "loss/adv_g", "loss/feature_matching", "loss/disc", "loss/commitment",
            "loss/codebook"} <= set(h[-1])
    for level in range(4):
        assert f"quantizer/usage_{level}" in h[-1] and f"quantizer/perplexity_{level}" in h[-1]
    tr.task.model.eval()
    codes = tr.task.model.encode(clip, 16000).codes[0]
    alive = [int(codes[:, q].unique().numel()) for q in range(4)]
    assert min(alive) > 1, alive

    # resume from the step-4 checkpoint of run a: the same final weights, bit for bit
    resumed = Trainer(load_train_config(_config(
        tmp_path, "b", resume=str(tmp_path / "a" / "checkpoints" / "step_00000004"))))
    resumed.fit()
    assert resumed.history[0]["step"] == 5  # it did resume (a fresh run would match too)
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and len(wa) > 50
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k

    media = tr.task.log_media({"audio": clip.repeat(2, 1, 1)})
    assert media["spectrogram"].shape[:2] == (2, 3) and media["audio/input"].shape == (2, 32000)


def test_codec_tensorboard_audio_and_spectrogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = Trainer(load_train_config(_config(tmp_path, "tb", steps=1, ckpt_every=1,
                                           tensorboard=True, image_every=1)))
    tr.fit()
    acc = EventAccumulator(str(next((tmp_path / "tb").rglob("events.*")).parent))
    acc.Reload()
    tags = acc.Tags()
    assert "spectrogram" in tags["images"]
    assert {"audio/input/0", "audio/reconstruction/0"} <= set(tags["audio"])


def test_codec_task_config_errors(tmp_path):
    base = yaml.safe_load(open(_config(tmp_path, "c")))
    bad = dict(base, model={"name": "titok_tiny"})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(TypeError, match="Codec"):
        Trainer(load_train_config(str(tmp_path / "bad.yaml")))
    rate = dict(base, data=dict(base["data"], sample_rate=8000))
    (tmp_path / "rate.yaml").write_text(yaml.safe_dump(rate))
    with pytest.raises(ValueError, match="sample_rate"):
        Trainer(load_train_config(str(tmp_path / "rate.yaml")))
    mel = dict(base, loss=dict(base["loss"], mel_bins=[5, 10]))
    (tmp_path / "mel.yaml").write_text(yaml.safe_dump(mel))
    with pytest.raises(ValueError, match="mel_windows"):
        Trainer(load_train_config(str(tmp_path / "mel.yaml")))
