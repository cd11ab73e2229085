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


RVQ_DROPOUT = """
import sys, torch
import torch.distributed as dist
from visualtok.quantize import QuantizerConfig, build_quantizer
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # identical initial codebooks
q = build_quantizer(QuantizerConfig(type="rvq", dim=8, codebook_size=16, num_quantizers=4,
                                    ema=True, quantizer_dropout=0.7))
torch.manual_seed(100 + rank)  # per-rank streams: the dropout draws differ between ranks
depths = []
for _ in range(12):
    out = q.train()(torch.randn(2, 32, 8))
    depths.append(int(out.stats["active_levels"]))
torch.save({"state": q.state_dict(), "depths": torch.tensor(depths)}, sys.argv[1] % rank)
dist.destroy_process_group()
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_rvq_quantizer_dropout_under_ddp_keeps_ranks_in_step(tmp_path):
    """RVQ with quantizer dropout under 2 gloo processes: every rank trains the same prefix of
    levels each step (rank 0's draw), so the EMA all-reduces pair up and the codebooks stay
    equal across ranks, with no hang."""
    script = tmp_path / "rvq.py"
    script.write_text(RVQ_DROPOUT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", "29519", str(script),
           str(tmp_path / "rvq%d.pt")]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    r0 = torch.load(tmp_path / "rvq0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rvq1.pt", weights_only=True)
    assert torch.equal(r0["depths"], r1["depths"])
    assert len(set(r0["depths"].tolist())) > 1  # dropout did vary the depth
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
