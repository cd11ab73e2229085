"""``visualtok`` command line: list, info, convert, encode, decode, reconstruct, train, generate.

Each sub-command is a thin wrapper over the Python API; heavy imports happen inside the command so
``visualtok --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

DEFAULT_TOKENIZER = "titok_photo128"
DEFAULT_GENERATOR = "gpt_photo128"
BUNDLED_PHOTO = Path(__file__).resolve().parent / "assets" / "astronaut.png"


# ----------------------------------------------------------------------------- helpers
def _load_tokenizer(name: str):
    """Load ``name``: a checkpoint dir, shipped weights in weights/, or the hub (offline first)."""
    import visualtok

    return visualtok.load(name)


def _check_visual(model, path: Path, what: str) -> None:
    """An image or a video goes to an image/video tokenizer, not to an audio codec."""
    from .audio.base import AudioCodec

    if isinstance(model, AudioCodec):
        from .audio.io import AUDIO_EXTENSIONS

        raise ValueError(f"{path} is {what} but {type(model).__name__} is an audio codec: pass an "
                         f"audio file ({', '.join(sorted(AUDIO_EXTENSIONS))}) or --model with an "
                         f"image or video tokenizer")


def _read_image_for(model, path: Path, convert: bool = False):
    from .data.image_io import load_image

    _check_visual(model, path, "an image")
    # PIL crop + resize, then float; a non-RGB file is refused unless --convert-rgb
    return load_image(path, model.image_size, convert=convert)[None]


def _psnr(a, b) -> float:
    from .metrics.image import psnr

    return float(psnr(a, b).mean())


# ----------------------------------------------------------------------------- audio
DEFAULT_AUDIO_CODEC = "encodec_24khz"


def _is_audio(path: str) -> bool:
    from .audio.io import AUDIO_EXTENSIONS

    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _audio_model_name(args: argparse.Namespace) -> str:
    return DEFAULT_AUDIO_CODEC if args.model in (None, DEFAULT_TOKENIZER) else args.model


def _load_codec(name: str):
    from .audio.base import AudioCodec

    model = _load_tokenizer(name)
    if not isinstance(model, AudioCodec):
        raise ValueError(f"{name} is a {type(model).__name__}, not an audio codec")
    return model


def _read_audio_for(model, path: Path):
    """``[1, C, T]`` and its rate, mixed to the codec's channels; what changed is said on stdout
    (the rate is converted by the caller)."""
    from .audio.io import read_audio, to_channels

    wav, sr = read_audio(path)
    changes = []
    if wav.shape[0] != model.channels:
        changes.append(f"{wav.shape[0]} -> {model.channels} channel(s)")
        wav = to_channels(wav, model.channels)
    if sr != model.sample_rate:
        changes.append(f"resampled {sr} -> {model.sample_rate} Hz")
    if changes:
        print(f"{path}: {', '.join(changes)} for {type(model).__name__}")
    return wav[None], sr


def _encode_audio(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    name = _audio_model_name(args)
    model = _load_codec(name)
    wav, sr = _read_audio_for(model, Path(args.image))
    codes = model.encode(wav, sr, n_q=args.n_q, resample=True)
    tensors = {"codes": codes.codes.contiguous(), "lengths": codes.lengths,
               "num_samples": codes.num_samples}
    if codes.scales is not None:
        tensors["scales"] = codes.scales.contiguous()
    meta = {"kind": "audio", "model": str(name), "sample_rate": str(model.sample_rate),
            "quantizer_sha256": _quantizer_digest(model), "source": str(args.image)}
    save_file(tensors, args.out, metadata=meta)
    t_f, n_q = codes.codes.shape[1:]
    print(f"{args.image}: {t_f} frames x {n_q} codebooks at {model.frame_rate:g} Hz, "
          f"{model.bitrate(n_q) / 1000:.2f} kbps -> {args.out}")
    return 0


def _decode_audio(args: argparse.Namespace, meta: dict) -> int:
    from .audio.base import AudioCodes
    from .audio.io import write_audio
    from .generate.tokens import read_codes_file

    t, _ = read_codes_file(args.codes, ("codes", "lengths", "num_samples"), "audio codes file")
    model = _load_codec(args.model or meta["model"])
    _check_recorded_layout(args.codes, meta, model)
    codes = AudioCodes(t["codes"], t["lengths"], t["num_samples"], t.get("scales"))
    wav = model.decode(codes)
    out = Path(args.out if args.out != "decoded.png" else "decoded.wav")
    write_audio(out, wav[0], model.sample_rate)
    print(f"decoded {tuple(codes.codes.shape)} codes -> {out} "
          f"({wav.shape[-1] / model.sample_rate:.2f} s at {model.sample_rate} Hz)")
    return 0


def _reconstruct_audio(args: argparse.Namespace) -> int:
    from .audio.io import resample, save_spectrograms, write_audio
    from .metrics.audio import mel_distance, si_sdr

    name = _audio_model_name(args)
    model = _load_codec(name)
    path = Path(args.image)
    wav, sr = _read_audio_for(model, path)
    wav = resample(wav, sr, model.sample_rate).clamp(-1.0, 1.0)  # sinc overshoot
    codes = model.encode(wav, model.sample_rate, n_q=args.n_q)
    recon = model.decode(codes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wav_out = write_audio(out / f"{path.stem}_reconstruction.wav", recon[0], model.sample_rate)
    picture = save_spectrograms(out / f"{path.stem}_spectrogram.png", [wav[0], recon[0]],
                                model.sample_rate, ["original", "reconstruction"])
    n_q = codes.n_q
    print(f"model       : {getattr(model, 'model_name', None) or name}")
    print(f"audio       : {path} -> {wav.shape[-1] / model.sample_rate:.2f} s, "
          f"{model.channels} ch at {model.sample_rate} Hz")
    print(f"codes       : {codes.codes.shape[1]} frames x {n_q} codebooks "
          f"({model.frame_rate:g} Hz)")
    print(f"bitrate     : {model.bitrate(n_q) / 1000:.2f} kbps")
    print(f"SI-SDR      : {float(si_sdr(recon, wav)[0]):.2f} dB")
    print(f"mel distance: {float(mel_distance(recon, wav, model.sample_rate)[0]):.4f}")
    print(f"wrote       : {wav_out}, {picture}")
    return 0


_VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def _is_video(path) -> bool:
    return Path(path).suffix.lower() in _VIDEO_SUFFIXES


def _read_clip_for(model, path: Path, args: argparse.Namespace):
    """``model.num_frames`` frames ``--stride`` apart from ``--start``, resized + centre-cropped."""
    from .video.io import probe, read_video

    _check_visual(model, path, "a video")
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
    for attr in ("image_size", "num_tokens", "token_shape", "bits_per_image",
                 "sample_rate", "channels", "hop_length", "frame_rate", "max_codebooks"):
        if hasattr(model, attr):
            info[attr] = getattr(model, attr)
    from .registry import MODELS

    rec = MODELS.get(args.model).pretrained if args.model in MODELS else None
    if rec is not None:
        info["weights"] = {"hub_id": rec.hub_id, "file": rec.filename, "format": rec.format,
                           "sha256": rec.sha256 or "not recorded: the file is unverified"}
    print(json.dumps(info, indent=2, default=str))
    return 0


def _create(name: str):
    from .registry import create_model

    return create_model(name).eval()


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_checkpoint
    from .train.config import parse_overrides

    model = convert_checkpoint(args.family, args.checkpoint, config=args.config, preset=args.preset,
                               overrides=parse_overrides(args.set) or None)
    out = model.save_pretrained(args.out)
    print(f"wrote {out} ({type(model).__name__}); open it with visualtok.load({str(out)!r})")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    if _is_audio(args.image):
        return _encode_audio(args)
    import torch
    from safetensors.torch import save_file

    if _is_video(args.image):
        return _encode_video(args)
    model = _load_tokenizer(args.model)
    images = _read_image_for(model, Path(args.image), args.convert_rgb)
    with torch.no_grad():
        codes = model.encode(images)
    meta = {
        "model": str(args.model),
        "code_layout": json.dumps(model.code_layout.to_dict()),
        "quantizer_sha256": _quantizer_digest(model),
        "source": str(args.image),
    }
    save_file({"codes": codes.contiguous()}, args.out, metadata=meta)
    bits = model.bits_per_image
    print(
        f"{args.image}: {codes.shape[1:-1].numel()} tokens x {codes.shape[-1]} factor(s), "
        f"{bits:.0f} bits -> {args.out}"
    )
    return 0


def _quantizer_digest(model) -> str:
    """sha256 of the quantizer's state (codebooks): codes mean something only through it."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.quantizer.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_recorded_layout(path: str, meta: dict[str, str], model) -> None:
    """Codes carry the code layout and quantizer digest of the model that made them; both must be
    this model's (a model with another codebook would decode them into a different picture)."""
    from .quantize.layout import CodeLayout

    made_by = meta.get("model", "another model")
    recorded = meta.get("code_layout")
    if recorded is not None:
        try:
            theirs = CodeLayout.from_dict(json.loads(recorded))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: unreadable code_layout metadata ({e})") from None
        ours = model.code_layout
        if (theirs.radices, theirs.kind, theirs.residual) != (
            ours.radices, ours.kind, ours.residual
        ):
            raise ValueError(
                f"{path} holds codes of {made_by} (code layout {theirs.kind} "
                f"{list(theirs.radices)}); the decoding model expects {ours.kind} "
                f"{list(ours.radices)}"
            )
    digest = meta.get("quantizer_sha256")
    if digest and hasattr(model, "quantizer") and digest != _quantizer_digest(model):
        raise ValueError(
            f"{path} holds codes of {made_by}, whose quantizer (codebook) differs from the "
            f"decoding model's: decode with --model {made_by}"
        )


def cmd_decode(args: argparse.Namespace) -> int:
    import torch

    from .data.image_io import save_image
    from .generate.tokens import read_codes_file

    tensors, meta = read_codes_file(args.codes)
    codes = tensors["codes"]
    if meta.get("kind") == "audio":
        return _decode_audio(args, meta)
    model = _load_tokenizer(args.model or meta.get("model", DEFAULT_TOKENIZER))
    _check_recorded_layout(args.codes, meta, model)
    with torch.no_grad():
        images = model.decode(codes)
    if getattr(model, "num_frames", None) is not None:  # a video tokenizer: video or frame grid
        out = _write_video_or_grid(images[0], Path(args.out), float(meta.get("fps", 24.0)))
        print(f"decoded {tuple(codes.shape)} codes -> {out}")
        return 0
    out = save_image(images, args.out)
    print(f"decoded {tuple(codes.shape)} codes -> {out}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    if args.image and _is_audio(args.image):
        return _reconstruct_audio(args)
    import torch

    from .data.image_io import save_grid

    path = Path(args.image) if args.image else BUNDLED_PHOTO
    if _is_video(path):
        return _reconstruct_video(args, path)
    model = _load_tokenizer(args.model)
    images = _read_image_for(model, path, args.convert_rgb)
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


def _class_name(gpt, label: int | None) -> str:
    """Display name of a class label: the checkpoint's ``class_names`` entry, else ``class k``."""
    if label is None:
        return "unconditional" if not gpt.config.num_classes else "unconditional (null class)"
    names = tuple(getattr(gpt.config, "class_names", ()) or ())
    return names[label] if label < len(names) else f"class {label}"


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "x"


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import visualtok

    from .data.image_io import save_grid, save_image
    from .generate.pipeline import generate_images

    if args.num_tokens is not None and args.num_tokens < 1:
        raise ValueError(
            f"--num-tokens must be >= 1 (omit it for all tokens); got {args.num_tokens}"
        )
    if args.num < 1:
        raise ValueError(f"--num must be >= 1; got {args.num}")
    tokenizer = _load_tokenizer(args.tokenizer)
    gpt = visualtok.load(args.model)
    if args.labels and args.per_class:
        raise ValueError("give either --labels or --per-class, not both")
    if args.per_class is not None:
        if args.per_class < 1:
            raise ValueError(f"--per-class must be >= 1; got {args.per_class}")
        if not gpt.config.num_classes:
            raise ValueError(f"--per-class needs a class-conditional generator; {args.model} "
                             "has num_classes = 0")
        labels = torch.arange(gpt.config.num_classes).repeat_interleave(args.per_class)
    elif args.labels:
        try:
            labels = torch.tensor([int(x) for x in args.labels.split(",")])
        except ValueError:
            raise ValueError(
                f"--labels must be comma-separated class ids; got {args.labels!r}"
            ) from None
        bad = [int(v) for v in labels if not 0 <= int(v) < gpt.config.num_classes]
        if bad:
            raise ValueError(f"--labels {bad} out of range: {args.model} has "
                             f"{gpt.config.num_classes} classes (0..{gpt.config.num_classes - 1})")
    elif gpt.config.num_classes:  # class-conditional: cycle through the classes
        labels = torch.arange(args.num) % gpt.config.num_classes
    else:
        labels = None
    g = torch.Generator().manual_seed(args.seed)
    from .audio.base import AudioCodec

    if isinstance(tokenizer, AudioCodec):
        return _generate_audio(args, gpt, tokenizer, labels, g)
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
    per_sample = [None] * len(images) if labels is None else [int(v) for v in labels]
    # one PNG per sample, named by index and class
    sample_dir = out / "samples"
    for i, (img, lab) in enumerate(zip(images, per_sample)):
        suffix = "" if lab is None else f"_{_file_safe(_class_name(gpt, lab))}"
        save_image(img, sample_dir / f"{i:03d}{suffix}.png")
    # the grid: one row per class (in order of first appearance), labelled with its name
    order = list(dict.fromkeys(per_sample))
    rows = [images[[i for i, lab in enumerate(per_sample) if lab == c]] for c in order]
    width = max(len(r) for r in rows)
    rows = [torch.cat([r, r.new_ones(width - len(r), *r.shape[1:])]) for r in rows]  # white pad
    grid = save_grid(rows, out / "samples.png", labels=[_class_name(gpt, c) for c in order])
    n = args.num_tokens or tokenizer.num_tokens
    print(f"generated {len(images)} images from {n} tokens each -> {grid} (one row per class) "
          f"and {len(images)} PNGs in {sample_dir}")
    return 0


def _generate_audio(args: argparse.Namespace, gpt, codec, labels, g) -> int:
    """``generate`` with an audio codec as the tokenizer: one wav per sample."""
    from .audio.io import write_audio
    from .generate.pipeline import generate_audio

    frames = args.num_tokens or gpt.config.num_tokens - gpt.delay_steps
    codes, wav = generate_audio(
        gpt, codec, frames, labels=labels, num_samples=None if labels is not None else args.num,
        generator=g, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        cfg_scale=args.cfg_scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(wav.shape[0]):
        write_audio(out / f"{i:03d}.wav", wav[i], codec.sample_rate)
    seconds = wav.shape[-1] / codec.sample_rate
    print(f"generated {wav.shape[0]} clips of {frames} frames ({seconds:g} s, {codes.shape[-1]} "
          f"levels) -> {out}/NNN.wav")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_media_args(s: argparse.ArgumentParser, out: str) -> None:
    """The options ``encode`` and ``reconstruct`` share: the tokenizer, the output, the audio
    bitrate and the video clip."""
    s.add_argument("--model", default=DEFAULT_TOKENIZER,
                   help=f"tokenizer (audio default: {DEFAULT_AUDIO_CODEC})")
    s.add_argument("--out", default=out)
    s.add_argument("--n-q", type=int, default=None, help="audio: codebooks to use (bitrate)")
    s.add_argument("--convert-rgb", action="store_true",
                   help="image: convert a grayscale/palette/CMYK/RGBA file to RGB (alpha on white) "
                        "instead of refusing it")
    s.add_argument("--start", type=int, default=0, help="video: first frame")
    s.add_argument("--stride", type=int, default=1, help="video: frames between samples")


class _OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on stderr (``visualtok CMD: error: ...``) and exit status 2, like
    every other error of the CLI; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="visualtok", description=__doc__.splitlines()[0])
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
    s.add_argument("family", help="converter family: titok, vqgan, retok, encodec, dac")
    s.add_argument("checkpoint", help="official weights (.bin/.pt/.pth/.th/.safetensors)")
    s.add_argument("--config", default=None, help="official config (json/yaml)")
    s.add_argument("--preset", default=None, help="visualtok preset the weights belong to")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a model config field the official config lacks, "
                        "e.g. --set channels=128")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("encode", help="image, video clip or audio file -> tokens (.safetensors)")
    s.add_argument("image",
                   help="an image, a video (.mp4/.webm/.mkv) or audio (.wav/.flac/.ogg/.mp3)")
    _add_media_args(s, out="codes.safetensors")
    s.set_defaults(fn=cmd_encode)

    s = sub.add_parser("decode", help="tokens (.safetensors) -> image, audio, or video (.mp4/.webm/"
                                      ".mkv or a frame-grid picture)")
    s.add_argument("codes")
    s.add_argument("--model", default=None, help="defaults to the model recorded with the codes")
    s.add_argument("--out", default="decoded.png")
    s.set_defaults(fn=cmd_decode)

    s = sub.add_parser("reconstruct", help="encode + decode an image or audio file; write it "
                       "side by side (audio: wav + spectrogram picture, SI-SDR, mel distance)")
    s.add_argument("image", nargs="?", default=None, help="defaults to a bundled real photo")
    _add_media_args(s, out="outputs")
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
    s.add_argument("--per-class", type=int, default=None, metavar="K",
                   help="K samples of every class (rows of the grid)")
    s.add_argument("--num-tokens", type=int, default=None, help="generate a prefix of this length")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--cfg-scale", type=float, default=None, help="CFG scale")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="outputs")
    s.set_defaults(fn=cmd_generate)
    return p


def _report(prog: str, e: BaseException, hint: str) -> int:
    """Print ``e`` as one line on stderr (never a traceback); return the exit status."""
    if isinstance(e, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    text = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (ValueError, TypeError, OSError)):  # not one of our input errors
        text = f"{type(e).__name__}: {text} ({hint} for the traceback)"
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def run_cli(fn: Callable[[], object], prog: str) -> int:
    """Run a script's ``fn()``; an error becomes one line on stderr and exit status 2
    (``VISUALTOK_TRACEBACK=1`` re-raises it instead). An int ``fn`` returns is the status."""
    try:
        result = fn()
    except (Exception, KeyboardInterrupt) as e:
        if os.environ.get("VISUALTOK_TRACEBACK") and not isinstance(e, KeyboardInterrupt):
            raise
        return _report(prog, e, "set VISUALTOK_TRACEBACK=1")
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run_script(fn: Callable[[], object]) -> None:
    """Entry point of the ``train/`` and ``eval/`` scripts: ``sys.exit(run_cli(fn, script))``."""
    sys.exit(run_cli(fn, Path(sys.argv[0]).name))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.fn(args)
    except (Exception, KeyboardInterrupt) as e:  # one line, never a traceback (-v shows it)
        if args.verbose and not isinstance(e, KeyboardInterrupt):
            raise
        return _report(f"visualtok {args.command}", e, "run with -v")


if __name__ == "__main__":
    sys.exit(main())
