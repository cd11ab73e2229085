"""train/pretokenize.py on audio folders: windows of real speech become codec codes [n, T, n_q]
in shards, resumable, split by process (also under ``accelerate launch``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from visualtok import create_model
from visualtok.audio.io import read_audio, write_audio
from visualtok.generate.tokens import TokenDataset, audio_windows, pretokenize_audio

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speech_folder(tmp_path_factory):
    """Two speakers' folders of real 16 kHz speech: 2.3 s, 1.0 s and 0.4 s clips."""
    root = tmp_path_factory.mktemp("speech")
    src = shared_path("data", "audio", "librispeech_samples")
    for name, sub, seconds in (("198-209-0000", "a", 2.3), ("3436-172162-0000", "a", 1.0),
                               ("5703-47212-0000", "b", 0.4)):
        wav, sr = read_audio(src / f"{name}.ogg", 16000)
        write_audio(root / sub / f"{name}.wav", wav[:, 16000 : 16000 + int(seconds * sr)], sr)
    return root


def _codec():
    torch.manual_seed(0)
    return create_model("codec_tiny", causal=True).eval()


def test_pretokenize_audio_windows_exact_and_resumable(speech_folder, tmp_path):
    codec = _codec()
    files = sorted(speech_folder.rglob("*.wav"))
    assert audio_windows(files, 16000, 8000) == [(0, 0), (0, 8000), (0, 16000), (0, 24000),
                                                 (1, 0), (1, 8000), (2, 0)]
    written = pretokenize_audio(codec, files, tmp_path / "tok", 8000, [0, 0, 1], ["a", "b"],
                                batch_size=2, shard_size=3)
    assert len(written) == 3
    ds = TokenDataset(tmp_path / "tok")
    assert ds.codes.shape == (7, 25, 4) and ds.layout == codec.code_layout
    assert ds.meta["token_shape"] == [25] and ds.meta["class_names"] == ["a", "b"]
    wav = read_audio(files[0], 16000)[0]
    assert torch.equal(ds.codes[1], codec.encode(wav[None, :, 8000:16000], 16000).codes[0])
    last = torch.nn.functional.pad(read_audio(files[2], 16000)[0], (0, 8000 - 6400))
    assert torch.equal(ds.codes[6], codec.encode(last[None], 16000).codes[0])  # zero-padded
    assert ds.labels.tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert pretokenize_audio(codec, files, tmp_path / "tok", 8000, shard_size=3) == []
    (tmp_path / "tok" / "shard-00001.safetensors").unlink()
    again = pretokenize_audio(codec, files, tmp_path / "tok", 8000, [0, 0, 1], ["a", "b"],
                              shard_size=3, process_index=1, num_processes=2)
    assert [p.name for p in again] == ["shard-00001.safetensors"]
    assert torch.equal(TokenDataset(tmp_path / "tok").codes, ds.codes)
    with pytest.raises(TypeError, match="AudioCodec"):
        pretokenize_audio(create_model("titok_tiny"), files, tmp_path / "x", 8000)
    with pytest.raises(ValueError, match="num_samples"):
        pretokenize_audio(codec, files, tmp_path / "x", 100)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_pretokenize_audio_under_accelerate_launch(speech_folder, tmp_path):
    codec = _codec()
    codec.save_pretrained(tmp_path / "codec")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["--tokenizer", str(tmp_path / "codec"), "--audio", str(speech_folder),
            "--seconds", "0.5", "--shard-size", "2", "--device", "cpu"]
    cmd = ["accelerate", "launch", "--num_processes", "2", "--num_machines", "1", "--multi_gpu",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
           "train/pretokenize.py", *args, "--out", str(tmp_path / "two")]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "process 0/2: wrote 2 shard(s)" in res.stdout
    assert "process 1/2: wrote 2 shard(s)" in res.stdout
    one = subprocess.run([sys.executable, "train/pretokenize.py", *args, "--out",
                          str(tmp_path / "one")], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    assert torch.equal(TokenDataset(tmp_path / "two").codes, TokenDataset(tmp_path / "one").codes)


@pytest.mark.slow
def test_speech_gpt_trains_on_audio_token_shards(speech_folder, tmp_path):
    """configs/gpt_speech.yaml on the shared trainer over pretokenized real speech (delay
    pattern): the NLL falls, and the saved GPT samples codes the codec decodes."""
    import visualtok
    from visualtok.generate.pipeline import generate_audio
    from visualtok.train.config import load_train_config
    from visualtok.train.trainer import Trainer

    codec = _codec()
    files = sorted(speech_folder.rglob("*.wav"))
    pretokenize_audio(codec, files, tmp_path / "tok", 8000)
    overrides = {
        "data.path": str(tmp_path / "tok"),
        "model.overrides": {"radices": [256] * 4, "num_tokens": 28, "num_layers": 1, "dim": 64,
                            "factor_head_dim": 32, "delay_pattern": True},
        "trainer.steps": 40, "trainer.batch_size": 4, "trainer.output_dir": str(tmp_path / "run"),
        "trainer.device": "cpu", "trainer.tensorboard": False, "trainer.progress": False,
        "trainer.ckpt_every": 1000, "trainer.log_every": 5, "optim.warmup_steps": 2,
        "optim.lr": 3e-3,
    }
    trainer = Trainer(load_train_config(REPO / "configs" / "gpt_speech.yaml", overrides))
    out = trainer.fit()
    first, last = trainer.history[0]["nll"], trainer.history[-1]["nll"]
    assert last < 0.8 * first, (first, last)
    gpt = visualtok.load(Path(out) / "model")
    codes, wav = generate_audio(gpt, codec, 25, num_samples=2,
                                generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 25, 4) and int(codes.max()) < 256
    assert wav.shape == (2, 1, 25 * 320)
