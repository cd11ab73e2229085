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
    tokenizer: torch.nn.Module,
    files: list[Path],
    out_dir: str | Path,
    labels: list[int] | None = None,
    class_names: list[str] | None = None,
    batch_size: int = 8,
    shard_size: int = 256,
    process_index: int = 0,
    num_processes: int = 1,
    device: str | torch.device = "cpu",
    tokenizer_name: str | None = None,
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
    """The shard loop shared by images and videos: ``batches(files)`` yields model inputs."""
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"got {len(labels)} labels for {len(files)} files")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("shard_size and batch_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout: CodeLayout = tokenizer.code_layout
    num_shards = (len(files) + shard_size - 1) // shard_size
    shard_names = [f"shard-{i:05d}.safetensors" for i in range(num_shards)]
    meta = {
        "tokenizer": tokenizer_name or getattr(tokenizer, "model_name", None),
        "code_layout": layout.to_dict(),
        "token_shape": list(tokenizer.token_shape),
        "image_size": list(tokenizer.image_size),
        **extra_meta,
        "num_images": len(files),
        "class_names": class_names or [],
        "num_classes": len(class_names) if class_names else 0,
        "shards": shard_names,
    }
    if process_index == 0:
        atomic_write_bytes(out / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    written = []
    tokenizer = tokenizer.to(device).eval()
    for i in range(process_index, num_shards, num_processes):
        path = out / shard_names[i]
        if path.is_file():
            log.info("skipping %s: already written", path.name)
            continue
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(files))
        codes = [tokenizer.encode(b.to(device)).cpu() for b in batches(files[lo:hi])]
        lab = torch.tensor(
            labels[lo:hi] if labels is not None else [0] * (hi - lo), dtype=torch.long
        )
        tensors = {
            "codes": torch.cat(codes).to(_code_dtype(layout)),
            "labels": lab,
            "index": torch.arange(lo, hi, dtype=torch.long),
        }
        _save_shard(path, tensors, {"code_layout": json.dumps(layout.to_dict())})
        written.append(path)
        log.info("wrote %s (%d items)", path.name, hi - lo)
    return written


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
