"""Exact resume after SIGKILL, crash-safe checkpoint writes, and resuming into the wrong model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
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
from visualtok.train.trainer import Trainer, run_training
hold = os.environ.get("HOLD", "")  # "write:step_N" / "done:step_N": pause there to be killed
orig_step = Trainer.train_step
def train_step(self, batch):
    print("STEP", self.step + 1, flush=True)  # the 1-based step about to be computed
    return orig_step(self, batch)
Trainer.train_step = train_step
orig_finalize = ck.finalize_checkpoint
def finalize(tmp, final, keep):
    print("WRITING", final.name, flush=True)
    if hold == "write:" + final.name:
        time.sleep(300)  # killed here: state written to the temporary dir, not yet renamed
    out = orig_finalize(tmp, final, keep)
    print("CKPT", final.name, flush=True)
    if hold == "done:" + final.name:
        time.sleep(300)  # killed here, right after the checkpoint is complete
    return out
ck.finalize_checkpoint = finalize
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
STEPS = RESUME_SECTIONS["trainer"]["steps"]


def _run(driver: Path, cfg: Path, hold: str = "", kill_on: str = "", delay: float = 0.0):
    """Run the driver; SIGKILL it ``delay`` s after it prints ``kill_on``. Returns the steps it
    started, in order."""
    env = dict(os.environ, HOLD=hold, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    steps, killed = [], False
    try:
        for line in proc.stdout:
            if line.startswith("STEP "):
                steps.append(int(line.split()[1]))
            if kill_on and line.strip() == kill_on:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    if killed:
        assert rc in (-signal.SIGKILL, 0), proc.stderr.read()[-3000:]
    else:
        assert rc == 0, proc.stderr.read()[-3000:]
    return steps


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, real_photos):
    """An uninterrupted run of the resume recipe: (photos folder, driver, its output dir)."""
    root = tmp_path_factory.mktemp("resume")
    photos = write_photos(root / "photos", real_photos)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    cfg = write_config(root / "ref.yaml", tiny_config(photos, root / "ref", **RESUME_SECTIONS))
    assert _run(driver, cfg) == list(range(1, STEPS + 1))
    return photos, driver, root / "ref"


def _kill_moments():
    """(hold, kill_on, delay): at fixed points, including inside a checkpoint write, and one
    random moment per test session; its seed is in the test id (replay: $VISUALTOK_KILL_SEED)."""
    seed = int(os.environ.get("VISUALTOK_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    step = rng.randint(1, STEPS)
    after = ("done:step_00000002", "CKPT step_00000002", 0.0)  # right after a checkpoint
    return [
        pytest.param(*after, marks=pytest.mark.slow, id="after"),
        pytest.param("write:step_00000004", "WRITING step_00000004", 0.0, id="during"),
        pytest.param("", f"STEP {step}", rng.uniform(0.0, 0.5), id=f"random-seed{seed}"),
    ]


@pytest.mark.parametrize("hold,kill_on,delay", _kill_moments())
def test_sigkill_then_resume_is_exact(tmp_path, reference_run, hold, kill_on, delay):
    photos, driver, ref = reference_run
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "a.yaml", tiny_config(photos, out, **RESUME_SECTIONS))
    where = f"killed {delay:.3f} s after {kill_on!r}"
    _run(driver, cfg, hold=hold, kill_on=kill_on, delay=delay)
    latest = ck.latest_checkpoint(out / "checkpoints")
    done = 0 if latest is None else ck.load_state_file(latest / "state.pt")["step"]
    if hold:
        assert done == int(hold.split("_")[-1]) - (2 if hold.startswith("write") else 0), where
        assert not (out / "model").exists()
    resumed = _run(driver, cfg)  # trainer.resume: auto
    if done < STEPS:  # the second run really resumed: it starts right after the checkpoint
        assert resumed == list(range(done + 1, STEPS + 1)), (where, done, resumed)
    else:
        assert resumed == [], (where, resumed)

    wa = load_file(out / "model" / "model.safetensors")
    wb = load_file(ref / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), (where, k)
    sa = ck.load_state_file(out / "checkpoints" / "step_00000006" / "state.pt")
    sb = ck.load_state_file(ref / "checkpoints" / "step_00000006" / "state.pt")
    ta, tb = dict(_tensors(sa)), dict(_tensors(sb))
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:  # model, discriminator, both optimizers, EMA, LeCam
        assert torch.equal(ta[k], tb[k]), (where, k)
    assert sa["sampler"] == sb["sampler"]
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000006"]  # keep_last: 2
    assert not list((out / "checkpoints").glob(".tmp_*"))  # the torn write was cleaned up
    assert not list(out.rglob(".*.tmp")), where  # and no half-written file anywhere


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
