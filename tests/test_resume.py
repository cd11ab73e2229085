"""Exact resume after SIGKILL, crash-safe checkpoint writes, and resuming into the wrong model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import tiny_config, write_config, write_photos
from safetensors.torch import load_file

from visualtok.hub import CheckpointError
from visualtok.train import checkpoint as ck
from visualtok.train import load_train_config
from visualtok.train.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent

DRIVER = """
import os, sys, time
import torch
torch.set_num_threads(1)
from visualtok.train import checkpoint as ck
from visualtok.train.trainer import run_training
stop_at = int(os.environ.get("STOP_AT", "0"))
orig = ck.finalize_checkpoint
def hooked(tmp, final, keep):
    out = orig(tmp, final, keep)
    print("CKPT", final.name, flush=True)
    if stop_at and final.name == "step_%08d" % stop_at:
        time.sleep(300)  # the test SIGKILLs us here, right after the checkpoint is complete
    return out
ck.finalize_checkpoint = hooked
run_training(sys.argv[1])
print("DONE", flush=True)
"""

# Everything stateful at once: GAN (2 optimizers, BatchNorm, LeCam), EMA, robustness and nested
# dropout (global RNG), warmup + cosine, and an epoch boundary (4 photos, batch 2) at the resume.
RESUME_SECTIONS = dict(
    loss={"gan_weight": 0.5, "gan_start_step": 1, "lecam_weight": 0.01},
    trainer={
        "steps": 6,
        "ckpt_every": 2,
        "keep_last": 2,
        "ema": {"enabled": True, "decay": 0.5},
        "robustness": {"enabled": True, "rate_end": 0.5, "strength_start": 3, "strength_end": 3},
        "nested_dropout": {"enabled": True},
    },
)


def _run(driver: Path, cfg: Path, stop_at: int = 0) -> None:
    env = dict(os.environ, STOP_AT=str(stop_at), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        for line in proc.stdout:
            if stop_at and line.strip() == f"CKPT step_{stop_at:08d}":
                os.kill(proc.pid, signal.SIGKILL)
                break
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    if stop_at:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 0, proc.stderr.read()[-3000:]


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def test_sigkill_then_resume_is_exact(tmp_path, real_photos):
    photos = write_photos(tmp_path / "photos", real_photos)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cfg_a = write_config(
        tmp_path / "a.yaml", tiny_config(photos, tmp_path / "a", **RESUME_SECTIONS)
    )
    cfg_b = write_config(
        tmp_path / "b.yaml", tiny_config(photos, tmp_path / "b", **RESUME_SECTIONS)
    )

    _run(driver, cfg_a, stop_at=2)  # killed right after the step-2 checkpoint
    assert ck.latest_checkpoint(tmp_path / "a" / "checkpoints").name == "step_00000002"
    assert not (tmp_path / "a" / "model").exists()
    _run(driver, cfg_a)  # resumes from step 2 (trainer.resume: auto)
    _run(driver, cfg_b)  # uninterrupted reference

    wa, wb = (
        load_file(tmp_path / "a" / "model" / "model.safetensors"),
        load_file(tmp_path / "b" / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = ck.load_state_file(tmp_path / "a" / "checkpoints" / "step_00000006" / "state.pt")
    sb = ck.load_state_file(tmp_path / "b" / "checkpoints" / "step_00000006" / "state.pt")
    ta, tb = dict(_tensors(sa)), dict(_tensors(sb))
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:  # model, discriminator, both optimizers, EMA, LeCam
        assert torch.equal(ta[k], tb[k]), k
    assert sa["sampler"] == sb["sampler"]
    kept = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]  # keep_last: 2


def test_crash_during_checkpoint_write_keeps_latest(tmp_path, real_photos, monkeypatch):
    photos = write_photos(tmp_path / "photos", real_photos)
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_config(photos, tmp_path / "out", trainer={"steps": 4, "ckpt_every": 2}),
    )
    real_save = torch.save

    def torn_save(obj, f, *a, **k):  # write half the bytes of the step-4 state, then die
        if isinstance(obj, dict) and obj.get("step") == 4:
            import io

            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(OSError, match="simulated"):
        Trainer(load_train_config(cfg)).fit()
    root = tmp_path / "out" / "checkpoints"
    latest = ck.latest_checkpoint(root)
    assert latest.name == "step_00000002"
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert ck.load_state_file(latest / "state.pt")["step"] == 2  # complete and readable
    monkeypatch.setattr(ck.torch, "save", real_save)
    tr = Trainer(load_train_config(cfg))
    tr.fit()  # resumes from step 2
    assert tr.history[0]["step"] == 3
    assert ck.latest_checkpoint(root).name == "step_00000004"
    assert not list(root.glob(".tmp_*"))
    with pytest.raises(CheckpointError, match="incomplete checkpoint|not a readable"):
        (root / "broken").mkdir()
        (root / "broken" / "state.pt").write_bytes(b"garbage")
        ck.load_state_file(root / "broken" / "state.pt")


def test_resume_from_another_model_is_an_error(tmp_path, real_photos):
    photos = write_photos(tmp_path / "photos", real_photos)
    base = tiny_config(photos, tmp_path / "out", trainer={"steps": 2, "ckpt_every": 2})
    Trainer(load_train_config(write_config(tmp_path / "a.yaml", base))).fit()
    other = tiny_config(
        photos,
        tmp_path / "out",
        trainer={"steps": 4},
        model={"overrides": {"num_latent_tokens": 8}},
    )
    with pytest.raises(CheckpointError, match="num_latent_tokens"):
        Trainer(load_train_config(write_config(tmp_path / "b.yaml", other))).fit()
    gan = tiny_config(photos, tmp_path / "out", trainer={"steps": 4}, loss={"gan_weight": 0.1})
    with pytest.raises(CheckpointError, match="discriminator|missing"):
        Trainer(load_train_config(write_config(tmp_path / "c.yaml", gan))).fit()
    explicit = tiny_config(
        photos, tmp_path / "new", trainer={"steps": 4, "resume": str(tmp_path / "nope")}
    )
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Trainer(load_train_config(write_config(tmp_path / "d.yaml", explicit))).fit()
