"""``visualtok`` command line: list, info, convert, encode, decode, reconstruct, train, generate.

Each sub-command is a thin wrapper over the Python API; heavy imports happen inside the command so
``visualtok --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_TOKENIZER = "titok_photo128"
DEFAULT_GENERATOR = "gpt_photo128"
BUNDLED_PHOTO = Path(__file__).resolve().parent / "assets" / "astronaut.png"


# ----------------------------------------------------------------------------- helpers
def _load_tokenizer(name: str):
    """Load ``name``: a checkpoint dir, shipped weights in weights/, or the hub (offline first)."""
    import visualtok

    return visualtok.load(name)


def _read_image_for(model, path: Path):
    from .data.image_io import center_crop_resize, load_image

    img = load_image(path)
    return center_crop_resize(img, model.image_size)[None]


def _psnr(a, b) -> float:
    from .metrics.image import psnr

    return float(psnr(a, b).mean())


_VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def _is_video(path) -> bool:
    return Path(path).suffix.lower() in _VIDEO_SUFFIXES


def _read_clip_for(model, path: Path, args: argparse.Namespace):
    """``model.num_frames`` frames ``--stride`` apart from ``--start``, resized + centre-cropped."""
    from .video.io import probe, read_video

    if getattr(model, "num_frames", None) is None:
        raise ValueError(f"{path} is a video but {type(model).__name__} is an image tokenizer: "
                         "pass --model with a video tokenizer (e.g. a titok3d checkpoint)")
    side = model.image_size[0]
    clip = read_video(path, model.num_frames, "stride", stride=args.stride, start=args.start,
                      size=side, crop=side)
    return clip[None], probe(path).fps / args.stride


def _write_video_or_grid(video, out: Path, fps: float) -> Path:
    """``[T, 3, H, W]`` -> a video file (by suffix) or a frame-grid picture."""
    from .video.io import save_frame_grid, write_video

    return write_video(out, video, fps) if _is_video(out) else save_frame_grid(out, video)


def _encode_video(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    model = _load_tokenizer(args.model)
    clip, fps = _read_clip_for(model, Path(args.image), args)
    with torch.no_grad():
        codes = model.encode(clip)
    meta = {"model": str(args.model), "code_layout": json.dumps(model.code_layout.to_dict()),
            "source": str(args.image), "fps": str(fps), "start": str(args.start)}
    save_file({"codes": codes.contiguous()}, args.out, metadata=meta)
    bits = model.bits_per_clip
    print(f"{args.image}: {model.num_frames} frames -> {codes.shape[1]} tokens x "
          f"{codes.shape[-1]} factor(s), {bits:.0f} bits ({bits * fps / model.num_frames:.0f} "
          f"bits/s) -> {args.out}")
    return 0


def _reconstruct_video(args: argparse.Namespace, path: Path) -> int:
    import torch

    from .video.io import write_video

    model = _load_tokenizer(args.model)
    clip, fps = _read_clip_for(model, path, args)
    with torch.no_grad():
        recon = model.decode(model.encode(clip))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    both = torch.cat([clip[0], recon[0]], dim=-1)  # side by side: original | reconstruction
    h, w = both.shape[-2:]
    video_out = out / f"{path.stem}_reconstruction.mp4"
    if h % 2 == 0 and w % 2 == 0:
        write_video(video_out, both, fps)
    else:
        video_out = write_video(out / f"{path.stem}_reconstruction.mkv", both, fps)
    grid = _write_video_or_grid(torch.cat([clip, recon]), out / f"{path.stem}_frames.png", fps)
    print(f"model       : {getattr(model, 'model_name', None) or args.model}")
    print(f"clip        : {path} -> {tuple(clip.shape[1:])}")
    print(f"tokens      : {model.num_tokens}, {model.bits_per_clip:.0f} bits per clip")
    print(f"PSNR        : {_psnr(recon[0], clip[0]):.2f} dB")
    print(f"side by side: {video_out}; frames: {grid}")
    return 0


# ----------------------------------------------------------------------------- commands
def cmd_list(args: argparse.Namespace) -> int:
    from .registry import get_model_entry, list_models

    for name in list_models(args.pattern, task=args.task):
        e = get_model_entry(name)
        rec = e.pretrained
        where = (rec.hub_id or "weights/") if rec else "-"
        print(f"{name:28s} {e.task:18s} {where}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    model = _load_tokenizer(args.model) if not args.random_init else _create(args.model)
    info = {
        "class": type(model).__name__,
        "name": getattr(model, "model_name", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    layout = getattr(model, "code_layout", None)
    if layout is not None:
        info["code_layout"] = layout.to_dict()
    for attr in ("image_size", "num_tokens", "token_shape", "bits_per_image"):
        if hasattr(model, attr):
            info[attr] = getattr(model, attr)
    print(json.dumps(info, indent=2, default=str))
    return 0


def _create(name: str):
    from .registry import create_model

    return create_model(name).eval()


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    model = convert_checkpoint(args.family, args.checkpoint, config=args.config, preset=args.preset)
    out = model.save_pretrained(args.out)
    print(f"wrote {out} ({type(model).__name__}); open it with visualtok.load({str(out)!r})")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    if _is_video(args.image):
        return _encode_video(args)
    model = _load_tokenizer(args.model)
    images = _read_image_for(model, Path(args.image))
    with torch.no_grad():
        codes = model.encode(images)
    meta = {
        "model": str(args.model),
        "code_layout": json.dumps(model.code_layout.to_dict()),
        "source": str(args.image),
    }
    save_file({"codes": codes.contiguous()}, args.out, metadata=meta)
    bits = model.bits_per_image
    print(
        f"{args.image}: {codes.shape[1:-1].numel()} tokens x {codes.shape[-1]} factor(s), "
        f"{bits:.0f} bits -> {args.out}"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import torch
    from safetensors import safe_open

    from .data.image_io import save_image

    with safe_open(args.codes, framework="pt") as f:
        codes = f.get_tensor("codes")
        meta = f.metadata() or {}
    model = _load_tokenizer(args.model or meta.get("model", DEFAULT_TOKENIZER))
    with torch.no_grad():
        images = model.decode(codes)
    if getattr(model, "num_frames", None) is not None:  # a video tokenizer: video or frame grid
        out = _write_video_or_grid(images[0], Path(args.out), float(meta.get("fps", 24.0)))
        print(f"decoded {tuple(codes.shape)} codes -> {out}")
        return 0
    save_image(images[0], args.out)
    print(f"decoded {tuple(codes.shape)} codes -> {args.out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from .data.image_io import save_grid

    path = Path(args.image) if args.image else BUNDLED_PHOTO
    if _is_video(path):
        return _reconstruct_video(args, path)
    model = _load_tokenizer(args.model)
    images = _read_image_for(model, path)
    with torch.no_grad():
        codes = model.encode(images)
        recon = model.decode(codes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = out / f"{path.stem}_reconstruction.png"
    save_grid([images, recon], grid, labels=["original", "reconstruction"])
    n_tokens = int(codes.shape[1:-1].numel())
    print(f"model       : {getattr(model, 'model_name', None) or args.model}")
    print(f"image       : {path} -> {tuple(images.shape[-2:])}")
    radices = model.code_layout.radices
    print(f"tokens      : {n_tokens} x {codes.shape[-1]} factor(s) (radices {radices})")
    print(
        f"bits        : {model.bits_per_image:.0f} per image "
        f"({model.code_layout.bits_per_token:.2f} per token)"
    )
    print(f"PSNR        : {_psnr(recon, images):.2f} dB")
    print(f"side by side: {grid}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_training
    from .train.config import parse_overrides

    overrides = parse_overrides(args.set)
    out = run_training(args.config, overrides=overrides or None)
    print(f"training finished: {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import visualtok

    from .data.image_io import save_grid
    from .generate.pipeline import generate_images

    tokenizer = _load_tokenizer(args.tokenizer)
    gpt = visualtok.load(args.model)
    labels = torch.tensor([int(x) for x in args.labels.split(",")]) if args.labels else None
    g = torch.Generator().manual_seed(args.seed)
    images = generate_images(
        gpt,
        tokenizer,
        labels=labels,
        num_samples=None if labels is not None else args.num,
        num_tokens=args.num_tokens,
        generator=g,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        cfg_scale=args.cfg_scale,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_grid([images], out / "samples.png")
    n = args.num_tokens or tokenizer.num_tokens
    print(f"generated {len(images)} images from {n} tokens each -> {out / 'samples.png'}")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_clip_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--start", type=int, default=0, help="video: first frame")
    s.add_argument("--stride", type=int, default=1, help="video: frames between samples")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visualtok", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list model presets")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--task", default=None, help="image-tokenizer | generator | ...")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("info", help="describe a model (config, code layout, parameters)")
    s.add_argument("model")
    s.add_argument("--random-init", action="store_true", help="build the preset without weights")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("convert", help="convert an official checkpoint into a visualtok checkpoint")
    s.add_argument("family", help="converter family, e.g. titok")
    s.add_argument("checkpoint", help="official weights (.bin/.pt/.safetensors)")
    s.add_argument("--config", default=None, help="official config (json/yaml)")
    s.add_argument("--preset", default=None, help="visualtok preset the weights belong to")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("encode", help="image or video clip -> tokens (.safetensors)")
    s.add_argument("image")
    s.add_argument("--model", default=DEFAULT_TOKENIZER)
    s.add_argument("--out", default="codes.safetensors")
    _add_clip_args(s)
    s.set_defaults(fn=cmd_encode)

    s = sub.add_parser("decode", help="tokens (.safetensors) -> image (video: .mp4/.webm/.mkv or "
                                      "a frame-grid picture)")
    s.add_argument("codes")
    s.add_argument("--model", default=None, help="defaults to the model recorded with the codes")
    s.add_argument("--out", default="decoded.png")
    s.set_defaults(fn=cmd_decode)

    s = sub.add_parser("reconstruct", help="encode + decode an image; write it side by side")
    s.add_argument("image", nargs="?", default=None, help="defaults to a bundled real photo")
    s.add_argument("--model", default=DEFAULT_TOKENIZER)
    s.add_argument("--out", default="outputs")
    _add_clip_args(s)
    s.set_defaults(fn=cmd_reconstruct)

    s = sub.add_parser("train", help="train from a YAML config (tokenizer or generator)")
    s.add_argument("config")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config entry, e.g. --set trainer.max_steps=100",
    )
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("generate", help="sample tokens with a GPT and decode them")
    s.add_argument("--model", default=DEFAULT_GENERATOR)
    s.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    s.add_argument("--num", type=int, default=8)
    s.add_argument("--labels", default=None, help="comma-separated class ids")
    s.add_argument("--num-tokens", type=int, default=None, help="generate a prefix of this length")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--cfg-scale", type=float, default=None, help="CFG scale")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="outputs")
    s.set_defaults(fn=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"visualtok {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
