"""Trainer step overhead vs a plain PyTorch loop on the same model and batch, and checkpoint cost.

    python benchmarks/train_step.py [--device cuda] [--batch 16] [--size 64] [--json out.json]

Reference: a hand-written AdamW step (forward, L2 + quantizer loss, backward, clip, step) on the
same ``titok_tiny``. visualtok: ``Trainer.train_step`` (task dispatch, accelerate backward and
clipping, lr schedule, logging dict) on the same batch. Also times one atomic checkpoint write.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, time_call, write_json  # noqa: E402
from visualtok.registry import create_model  # noqa: E402
from visualtok.train.config import TrainConfig, config_from_dict  # noqa: E402
from visualtok.train.trainer import Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    photos = Path(tempfile.mkdtemp()) / "p"
    photos.mkdir()
    from PIL import Image

    for i in range(4):
        Image.fromarray((torch.rand(args.size, args.size, 3) * 255).byte().numpy()).save(
            photos / f"{i}.png"
        )
    images = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    overrides = {"image_size": args.size}

    torch.manual_seed(0)
    ref = create_model("titok_tiny", **overrides).to(dev).train()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    def ref_step() -> None:
        out = ref(images)
        loss = torch.nn.functional.mse_loss(out.recon, images) + out.quant.losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    out_dir = Path(tempfile.mkdtemp())
    cfg = config_from_dict(
        TrainConfig,
        {
            "model": {"name": "titok_tiny", "overrides": overrides},
            "data": {"path": str(photos), "image_size": args.size},
            "trainer": {"batch_size": args.batch, "output_dir": str(out_dir), "progress": False,
                        "tensorboard": False, "device": "cpu" if dev.type == "cpu" else None},
        },
    )
    tr = Trainer(cfg)
    batch = {"image": images}

    def ours_step() -> None:
        tr.train_step(batch)
        tr.step += 1

    rows = []
    # interleaved so that load from other processes hits both sides alike
    t_ref_all, t_ours_all = [], []
    for _ in range(args.repeats):
        t_ref_all.append(time_call(ref_step, dev, warmup=1, repeats=1))
        t_ours_all.append(time_call(ours_step, dev, warmup=1, repeats=1))
    t_ref, t_ours = statistics.median(t_ref_all), statistics.median(t_ours_all)
    rows.append({"what": f"train step (titok_tiny {args.size}px, batch {args.batch})",
                 "reference_ms": t_ref * 1e3, "visualtok_ms": t_ours * 1e3,
                 "ratio": t_ours / t_ref})
    t_ck = time_call(tr.save_checkpoint, dev, warmup=0, repeats=1)
    size = sum(f.stat().st_size for f in (out_dir / "checkpoints").rglob("*") if f.is_file())
    rows.append({"what": f"atomic checkpoint write ({size / 2**20:.1f} MiB)", "reference_ms": "",
                 "visualtok_ms": t_ck * 1e3, "ratio": ""})
    info = machine_info(dev)
    print(f"machine: {info}")
    print_table(rows, ["what", "reference_ms", "visualtok_ms", "ratio"], title="trainer overhead")
    write_json(args.json, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
