"""Two CPU processes (gloo) through ``accelerate launch``: the run works and ranks stay in sync."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _train_helpers import tiny_config, write_config, write_photos

from visualtok.train import checkpoint as ck

REPO = Path(__file__).resolve().parent.parent

DUMP = """
import sys, torch
import torch.distributed as dist
from visualtok.train.trainer import Trainer
from visualtok.train import load_train_config
tr = Trainer(load_train_config(sys.argv[1]))
tr.fit()
q = tr.task.model.quantizer.state_dict()
torch.save({k: v.clone() for k, v in q.items()}, sys.argv[2] % tr.rank)
"""


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_process_cpu_run(tmp_path, real_photos):
    photos = write_photos(tmp_path / "photos", real_photos)
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_config(
            photos,
            tmp_path / "out",
            trainer={"steps": 4, "ckpt_every": 2, "device": "cpu"},
            model={
                "overrides": {
                    "quantizer": {
                        "type": "vq",
                        "codebook_size": 64,
                        "ema": True,
                        "l2_normalize": True,
                    }
                }
            },
        ),
    )
    script = tmp_path / "dump.py"
    script.write_text(DUMP)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # accelerate 1.15: ``--cpu`` alone starts ONE process; ``--multi_gpu`` starts torchrun, and
    # Accelerator(cpu=True) (trainer.device: cpu) then joins a gloo group of 2 CPU processes.
    cmd = [
        "accelerate",
        "launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--multi_gpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
        str(script),
        str(cfg),
        str(tmp_path / "q%d.pt"),
    ]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    q0 = torch.load(tmp_path / "q0.pt", weights_only=True)
    q1 = torch.load(tmp_path / "q1.pt", weights_only=True)
    assert q0.keys() == q1.keys() and q0
    for k in q0:  # EMA codebook updates are all-reduced: identical on both ranks
        assert torch.equal(q0[k], q1[k]), k
    state = ck.load_state_file(ck.latest_checkpoint(tmp_path / "out" / "checkpoints") / "state.pt")
    assert state["step"] == 4 and state["meta"]["world_size"] == 2
    assert sorted(
        p.name for p in ck.latest_checkpoint(tmp_path / "out" / "checkpoints").glob("rng_rank*.pt")
    ) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
