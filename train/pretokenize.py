"""Pre-tokenize an image folder into token shards for generator training.

    python train/pretokenize.py --tokenizer titok_s128 --images /data/imagenet/train --out tokens/
    accelerate launch --num_processes 4 train/pretokenize.py --tokenizer runs/titok_tiny/model \
        --images ../shared/data/images --out tokens/photos --image-size 64

Labels come from the first-level sub-folders (ImageNet layout). Shards already on disk are
skipped, so an interrupted run resumes; under ``accelerate launch`` each process writes the
shards ``i % num_processes == process_index``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from visualtok.data.image_io import list_images, select_subset
from visualtok.generate.tokens import labels_from_folders, pretokenize_images


def _load_tokenizer(name: str, random_init: bool) -> torch.nn.Module:
    import visualtok

    if random_init:
        return visualtok.create_model(name)
    return visualtok.load(name)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="checkpoint dir or preset name")
    p.add_argument(
        "--random-init", action="store_true", help="build the preset with random weights"
    )
    p.add_argument("--images", required=True, help="image folder (class sub-folders give labels)")
    p.add_argument("--out", required=True, help="output token folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--limit", type=int, default=None,
                   help="use only N images, evenly strided over the sorted list (never the first "
                        "N, which in class folders would be one class)")
    p.add_argument("--device", default=None, help="default: accelerate's device (cpu without GPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        from accelerate import PartialState

        state = PartialState(cpu=args.device == "cpu")
        rank, world, device = state.process_index, state.num_processes, state.device
    except ImportError:  # accelerate is a dependency; this only keeps the script usable without it
        rank, world, device = 0, 1, torch.device("cpu")
    device = torch.device(args.device) if args.device else device
    files, subset = select_subset(list_images(args.images), args.limit)
    print(f"images: {subset} files under {args.images}")
    labels, classes = labels_from_folders(args.images, files)
    tok = _load_tokenizer(args.tokenizer, args.random_init)
    written = pretokenize_images(
        tok,
        files,
        args.out,
        labels,
        classes,
        args.batch_size,
        args.shard_size,
        rank,
        world,
        device,
        tokenizer_name=args.tokenizer,
    )
    print(f"process {rank}/{world}: wrote {len(written)} shard(s) to {args.out}")
    return written


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
