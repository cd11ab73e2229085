"""Token shards: a dataset pre-tokenized once, read by the generator's training loop.

Layout of a token folder::

    tokens.json                 tokenizer, code layout, token shape S, class names, shard list
    shard-00000.safetensors     codes [n, *S, F] (smallest int dtype), labels [n], index [n]
    ...

``pretokenize_images`` (``pretokenize_videos``: one clip per video file) writes shard ``i``
(items ``i*shard_size ..``) from process ``i % num_processes``, each shard atomically, and skips
shards already on disk: a crashed or interrupted run resumes where it stopped, and ``accelerate
launch`` splits the work by process.
Labels are the first-level sub-folder of each image (ImageNet layout), sorted; 0 when flat.
``pretokenize_audio`` does the same for audio folders: every whole window of ``num_samples`` of
each file (one zero-padded window for shorter files) becomes codes ``[T_frames, n_q]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..config import load_json
from ..hub import atomic_write, atomic_write_bytes
from ..quantize.layout import CodeLayout

__all__ = [
    "pretokenize_images",
    "pretokenize_videos",
    "pretokenize_audio",
    "audio_windows",
    "labels_from_folders",
    "TokenDataset",
    "read_token_meta",
    "read_codes_file",
]

log = logging.getLogger(__name__)
META_NAME = "tokens.json"


def _code_dtype(layout: CodeLayout) -> torch.dtype:
    m = layout.max_radix
    return torch.int16 if m <= 2**15 else torch.int32 if m <= 2**31 else torch.int64


def labels_from_folders(root: str | Path, files: list[Path]) -> tuple[list[int], list[str]]:
    """Class id of each file = its first-level sub-folder under ``root`` (sorted names)."""
    root = Path(root)
    names = [
        p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files
    ]
    classes = sorted(set(names))
    ids = {c: i for i, c in enumerate(classes)}
    return [ids[n] for n in names], classes


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


@torch.no_grad()
def pretokenize_images(
    tokenizer: torch.nn.Module,
    files: list[Path],
    out_dir: str | Path,
    labels: list[int] | None = None,
    class_names: list[str] | None = None,
    batch_size: int = 32,
    shard_size: int = 1024,
    process_index: int = 0,
    num_processes: int = 1,
    device: str | torch.device = "cpu",
    tokenizer_name: str | None = None,
) -> list[Path]:
    """Encode ``files`` with ``tokenizer`` into shards under ``out_dir``; returns new shards."""
    from ..data.image_io import iter_image_batches

    if not files:
        raise ValueError("pretokenize_images: no image files given")
    size = tuple(tokenizer.image_size)
    return _pretokenize(
        tokenizer, files, out_dir, lambda chunk: iter_image_batches(chunk, size, batch_size),
        labels, class_names, batch_size, shard_size, process_index, num_processes, device,
        tokenizer_name, {},
    )


@torch.no_grad()
def pretokenize_videos(
    tokenizer: torch.nn.Module, files: list[Path], out_dir: str | Path,
    labels: list[int] | None = None, class_names: list[str] | None = None, batch_size: int = 8,
    shard_size: int = 256, process_index: int = 0, num_processes: int = 1,
    device: str | torch.device = "cpu", tokenizer_name: str | None = None,
    sampling: str = "uniform",
) -> list[Path]:
    """Token shards of video clips, as ``pretokenize_images``: each file gives one clip of the
    tokenizer's ``num_frames`` (``sampling`` over the whole file, ``visualtok.data.video_io``),
    short side resized and centre-cropped to its frame size. An unreadable file is an error."""
    from ..data.video_io import read_video

    if not files:
        raise ValueError("pretokenize_videos: no video files given")
    t, (h, w) = int(tokenizer.num_frames), tuple(tokenizer.image_size)

    def batches(chunk: list[Path]):
        for i in range(0, len(chunk), batch_size):
            yield torch.stack([read_video(f, t, sampling, size=min(h, w), crop=(h, w))
                               for f in chunk[i : i + batch_size]])

    return _pretokenize(
        tokenizer, files, out_dir, batches, labels, class_names, batch_size, shard_size,
        process_index, num_processes, device, tokenizer_name, {"num_frames": t},
    )


def _pretokenize(tokenizer, files, out_dir, batches, labels, class_names, batch_size, shard_size,
                 process_index, num_processes, device, tokenizer_name, extra_meta) -> list[Path]:
    """Shards of images or video clips: ``batches(files)`` yields model inputs."""
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"got {len(labels)} labels for {len(files)} files")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout: CodeLayout = tokenizer.code_layout
    num_shards = (len(files) + shard_size - 1) // shard_size
    meta = {
        "tokenizer": tokenizer_name or getattr(tokenizer, "model_name", None),
        "code_layout": layout.to_dict(),
        "token_shape": list(tokenizer.token_shape),
        "image_size": list(tokenizer.image_size),
        **extra_meta,
        "num_images": len(files),
        "class_names": class_names or [],
        "num_classes": len(class_names) if class_names else 0,
        "shards": [f"shard-{i:05d}.safetensors" for i in range(num_shards)],
    }
    tokenizer = tokenizer.to(device).eval()

    def encode(lo: int, hi: int) -> torch.Tensor:
        return torch.cat([tokenizer.encode(b.to(device)).cpu() for b in batches(files[lo:hi])])

    return _write_shards(out, meta, layout, process_index, num_processes, shard_size, encode,
                         labels, "items")


def _write_shards(out: Path, meta: dict[str, Any], layout: CodeLayout, process_index: int,
                  num_processes: int, shard_size: int, encode, labels: list[int] | None,
                  what: str) -> list[Path]:
    """Write ``meta`` (process 0) and this process's shards ``i % num_processes``: items
    ``i*shard_size ..`` encoded by ``encode(lo, hi)``; shards already on disk are skipped."""
    if process_index == 0:
        atomic_write_bytes(out / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    written = []
    names = meta["shards"]
    for i in range(process_index, len(names), num_processes):
        path = out / names[i]
        if path.is_file():
            log.info("skipping %s: already written", path.name)
            continue
        codes = encode(i * shard_size, (i + 1) * shard_size)
        lo, hi = i * shard_size, i * shard_size + codes.shape[0]
        lab = torch.tensor(
            labels[lo:hi] if labels is not None else [0] * (hi - lo), dtype=torch.long
        )
        tensors = {
            "codes": codes.to(_code_dtype(layout)),
            "labels": lab,
            "index": torch.arange(lo, hi, dtype=torch.long),
        }
        _save_shard(path, tensors, {"code_layout": json.dumps(layout.to_dict())})
        written.append(path)
        log.info("wrote %s (%d %s)", path.name, hi - lo, what)
    return written


def audio_windows(files: list[Path], sample_rate: int, num_samples: int) -> list[tuple[int, int]]:
    """``(file index, start)`` of every whole ``num_samples`` window of each file at
    ``sample_rate`` (lengths from the file headers); a shorter file gives one zero-padded window."""
    import soundfile as sf

    out = []
    for i, p in enumerate(files):
        try:
            info = sf.info(str(p))
        except Exception as e:  # soundfile's own error types
            raise ValueError(f"{p} is not a readable audio file: {e}") from None
        n = info.frames * sample_rate // info.samplerate
        out += [(i, k * num_samples) for k in range(max(1, n // num_samples))]
    return out


@torch.no_grad()
def pretokenize_audio(
    codec: torch.nn.Module, files: list[Path], out_dir: str | Path, num_samples: int,
    labels: list[int] | None = None, class_names: list[str] | None = None, *,
    batch_size: int = 16, shard_size: int = 1024, process_index: int = 0, num_processes: int = 1,
    device: str | torch.device = "cpu", tokenizer_name: str | None = None,
) -> list[Path]:
    """Encode every ``num_samples`` window of the audio ``files`` with an ``AudioCodec`` (all
    its levels) into shards of codes ``[n, T_frames, n_q]``; ``labels`` are per file. As
    ``pretokenize_images``: one meta file, shards split by process, finished shards skipped."""
    from ..audio.base import AudioCodec
    from ..audio.io import read_audio

    if not isinstance(codec, AudioCodec):
        raise TypeError(f"pretokenize_audio needs an AudioCodec; got {type(codec).__name__}")
    if not files:
        raise ValueError("pretokenize_audio: no audio files given")
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"got {len(labels)} labels for {len(files)} files")
    if shard_size < 1 or batch_size < 1 or num_samples < codec.hop_length:
        raise ValueError(f"shard_size and batch_size must be >= 1 and num_samples >= the hop "
                         f"({codec.hop_length}); got {shard_size}, {batch_size}, {num_samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sr = codec.sample_rate
    windows = audio_windows(files, sr, num_samples)
    layout: CodeLayout = codec.code_layout
    num_shards = (len(windows) + shard_size - 1) // shard_size
    meta = {
        "tokenizer": tokenizer_name or getattr(codec, "model_name", None),
        "code_layout": layout.to_dict(),
        "token_shape": [codec.num_frames(num_samples)],
        "sample_rate": sr,
        "num_samples": num_samples,
        "num_clips": len(windows),
        "num_files": len(files),
        "class_names": class_names or [],
        "num_classes": len(class_names) if class_names else 0,
        "shards": [f"shard-{i:05d}.safetensors" for i in range(num_shards)],
    }
    codec = codec.to(device).eval()
    cache: dict[int, torch.Tensor] = {}

    def clip(j: int) -> torch.Tensor:
        f, start = windows[j]
        if f not in cache:
            cache.clear()  # windows of a file are consecutive: keep one file
            cache[f] = read_audio(files[f], sr, codec.channels)[0]
        w = cache[f][:, start : start + num_samples]
        return torch.nn.functional.pad(w, (0, num_samples - w.shape[-1]))

    def encode(lo: int, hi: int) -> torch.Tensor:
        hi = min(hi, len(windows))
        parts = []
        for b in range(lo, hi, batch_size):
            batch = torch.stack([clip(j) for j in range(b, min(b + batch_size, hi))])
            parts.append(codec.encode(batch.to(device), sr).codes.cpu())
        return torch.cat(parts)

    file_labels = [labels[f] for f, _ in windows] if labels is not None else None
    return _write_shards(out, meta, layout, process_index, num_processes, shard_size, encode,
                         file_labels, "clips")


def read_codes_file(
    path: str | Path, keys: tuple[str, ...] = ("codes",), what: str = "codes file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors codes file (``visualtok encode``, token shards).

    A missing file, a file that is not safetensors, a missing key in ``keys`` or codes that are not
    integers ``[N, *S, F]`` is an error naming the file and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    expected = f"a safetensors file holding {', '.join(repr(k) for k in keys)}"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{path} is not {expected} ({reason})") from None
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise ValueError(f"{path}: expected {expected}; it has {sorted(tensors)}")
    codes = tensors.get("codes")
    if codes is not None and (codes.dtype.is_floating_point or codes.dtype.is_complex
                              or codes.dtype == torch.bool or codes.ndim < 2):
        raise ValueError(
            f"{path}: 'codes' must be integer codes [N, *S, F]; got {codes.dtype} "
            f"shape {tuple(codes.shape)}"
        )
    return tensors, meta


def read_token_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a token folder: {META_NAME} is missing "
            f"(make one with train/pretokenize.py)"
        )
    meta = load_json(path, "token folder description")
    need = ("code_layout", "token_shape", "shards")
    if not isinstance(meta, dict) or any(k not in meta for k in need):
        raise ValueError(f"{path}: a token folder description needs the keys {list(need)}")
    return meta


class TokenDataset(Dataset):
    """All shards of a token folder in memory; items ``{"codes": [*S, F] int64, "label": int}``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = read_token_meta(folder)
        self.layout = CodeLayout.from_dict(self.meta["code_layout"])
        missing = [s for s in self.meta["shards"] if not (self.folder / s).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: token shards missing (pretokenize not finished?): {missing[:5]}"
            )
        parts = [
            read_codes_file(self.folder / s, ("codes", "labels"), "token shard")[0]
            for s in self.meta["shards"]
        ]
        self.codes = torch.cat([p["codes"] for p in parts]).long()
        self.labels = torch.cat([p["labels"] for p in parts])

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index = item[0] if isinstance(item, tuple) else item
        return {"codes": self.codes[index], "label": self.labels[index]}
