"""Pre-tokenize an image, video or audio folder into token shards for generator training.

    python train/pretokenize.py --tokenizer titok_s128 --images /data/imagenet/train --out tokens/
    python train/pretokenize.py --tokenizer runs/titok3d_tiny/model --videos clips/ --out tokens/v
    accelerate launch --num_processes 4 train/pretokenize.py --tokenizer runs/titok_tiny/model \
        --images ../shared/data/images --out tokens/photos --image-size 64
    accelerate launch --num_processes 2 train/pretokenize.py --tokenizer runs/codec/model \
        --audio runs/speech16k/train --seconds 5 --out tokens/speech

Audio (``--audio``): every whole ``--seconds`` window of each file at the codec's rate (one
zero-padded window for shorter files) becomes codes ``[T_frames, n_q]``.

With ``--videos`` each video file gives one clip of the tokenizer's frame count (uniformly
sampled). Labels come from the first-level sub-folders (ImageNet layout). Shards already on disk are
skipped, so an interrupted run resumes; under ``accelerate launch`` each process writes the
shards ``i % num_processes == process_index``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from visualtok.data.image_io import list_images, select_subset
from visualtok.generate.tokens import (
    labels_from_folders,
    pretokenize_audio,
    pretokenize_images,
    pretokenize_videos,
)


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder (class sub-folders give labels)")
    src.add_argument("--videos", help="video folder (mp4/webm/...; one clip per file)")
    src.add_argument("--audio", help="audio folder (wav/flac/ogg/mp3; sub-folders give labels)")
    p.add_argument("--seconds", type=float, default=5.0, help="audio: window length")
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
    tok = _load_tokenizer(args.tokenizer, args.random_init)
    if args.audio is not None:
        return _audio(args, tok, rank, world, device)
    root = args.images or args.videos
    if args.videos:
        from visualtok.data.video import VIDEO_EXTENSIONS

        found = sorted(f for f in Path(root).rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        if not found:
            raise ValueError(f"--videos {root}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    else:
        found = list_images(root)
    files, subset = select_subset(found, args.limit)
    print(f"{'videos' if args.videos else 'images'}: {subset} files under {root}")
    labels, classes = labels_from_folders(root, files)
    written = (pretokenize_videos if args.videos else pretokenize_images)(
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


def _audio(args: argparse.Namespace, codec, rank: int, world: int, device) -> list[Path]:
    from visualtok.audio.io import AUDIO_EXTENSIONS

    root = Path(args.audio)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder not found: {root}")
    if args.seconds <= 0:
        raise ValueError(f"--seconds must be > 0; got {args.seconds}")
    found = sorted(p for p in root.rglob("*") if p.is_file()
                   and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not found:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    files, subset = select_subset(found, args.limit)
    print(f"audio: {subset} files under {root}")
    labels, classes = labels_from_folders(root, files)
    written = pretokenize_audio(
        codec, files, args.out, round(args.seconds * codec.sample_rate), labels, classes,
        batch_size=args.batch_size, shard_size=args.shard_size, process_index=rank,
        num_processes=world, device=device, tokenizer_name=args.tokenizer)
    print(f"process {rank}/{world}: wrote {len(written)} shard(s) to {args.out}")
    return written


if __name__ == "__main__":
    from visualtok.cli import run_script

    run_script(main)
