"""Image tar shards in the webdataset layout (``<key>.png|jpg`` + ``<key>.cls`` per sample).

``write_image_shards(folder, out_pattern)`` packs an image folder into shards;
``ImageShardDataset(pattern)`` reads them back as a *map-style* dataset (an index of tar members
is built once), so the resumable sampler and exact resume work exactly as for image folders.
The files are plain tars that ``webdataset.WebDataset`` also reads.
"""

from __future__ import annotations

import glob
import io
import tarfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..hub import atomic_write
from .image_io import open_image
from .images import find_images, random_crop_resize
from .sampler import item_generator

__all__ = ["write_image_shards", "ImageShardDataset", "expand_shards"]

_IMAGE_EXT = ("png", "jpg", "jpeg", "webp")


def write_image_shards(
    folder: str | Path,
    out_pattern: str | Path,
    max_per_shard: int = 1000,
    label_from_parent: bool = True,
) -> list[Path]:
    """Pack the images under ``folder`` into tars ``out_pattern % shard_index`` (e.g.
    ``"out/train-%05d.tar"``). Each sample is ``<key>.<ext>`` (the original bytes) and ``<key>.cls``
    (the index of its parent folder among the sorted parent folders). Returns the shard paths."""
    if "%" not in str(out_pattern):
        raise ValueError(
            f"out_pattern must contain a %-format for the shard index, e.g. "
            f"'shards/train-%05d.tar'; got {out_pattern!r}"
        )
    if max_per_shard < 1:
        raise ValueError(f"max_per_shard must be >= 1; got {max_per_shard}")
    root = Path(folder)
    files = find_images(root)
    parents = sorted({f.parent for f in files})
    label = {p: i for i, p in enumerate(parents)}
    out: list[Path] = []
    for s in range(0, len(files), max_per_shard):
        path = Path(str(out_pattern) % (s // max_per_shard))
        with atomic_write(path) as tmp, tarfile.open(tmp, "w") as tar:
            for i, f in enumerate(files[s : s + max_per_shard], start=s):
                key = f"{i:08d}"
                ext = f.suffix.lower().lstrip(".")
                _add(tar, f"{key}.{ext}", f.read_bytes())
                cls = label[f.parent] if label_from_parent else 0
                _add(tar, f"{key}.cls", str(cls).encode())
        out.append(path)
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def expand_shards(pattern: str | Path) -> list[Path]:
    """A folder (all ``*.tar``), a glob, or ``a-{000..009}.tar`` -> sorted shard paths."""
    p = str(pattern)
    if Path(p).is_dir():
        paths = sorted(Path(p).glob("*.tar"))
    elif "{" in p and ".." in p:
        head, rest = p.split("{", 1)
        rng, tail = rest.split("}", 1)
        a, b = rng.split("..")
        paths = [Path(f"{head}{i:0{len(a)}d}{tail}") for i in range(int(a), int(b) + 1)]
        missing = [q for q in paths if not q.is_file()]
        if missing:
            raise FileNotFoundError(f"shard(s) not found: {missing[:3]}")
    else:
        paths = sorted(Path(q) for q in glob.glob(p))
    if not paths:
        raise FileNotFoundError(f"no tar shards match {p!r}")
    return paths


class ImageShardDataset(Dataset):
    """Map-style dataset over webdataset-layout image shards. Items: image, label, index."""

    def __init__(
        self,
        pattern: str | Path,
        image_size: int,
        train: bool = True,
        random_flip: bool = True,
        resize_short: int | None = None,
        scale_range: tuple[float, float] | None = None,
    ) -> None:
        self.shards = expand_shards(pattern)
        self.samples: list[tuple[int, tarfile.TarInfo, tarfile.TarInfo | None]] = []
        for si, shard in enumerate(self.shards):
            with tarfile.open(shard) as tar:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar.getmembers():
                    if m.isfile() and "." in m.name:
                        key, ext = m.name.split(".", 1)
                        groups.setdefault(key, {})[ext.lower()] = m
            for key in sorted(groups):
                g = groups[key]
                img = next((g[e] for e in _IMAGE_EXT if e in g), None)
                if img is not None:
                    self.samples.append((si, img, g.get("cls")))
        if not self.samples:
            raise ValueError(f"empty dataset: no images in the shards {self.shards[:3]}")
        self.image_size, self.train = image_size, train
        self.random_flip, self.resize_short = random_flip, resize_short
        self.scale_range = scale_range
        self._open: dict[int, tarfile.TarFile] = {}  # per worker process, opened lazily

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, shard: int, member: tarfile.TarInfo) -> bytes:
        if shard not in self._open:
            self._open[shard] = tarfile.open(self.shards[shard])
        return self._open[shard].extractfile(member).read()

    def __getstate__(self):  # tar handles do not cross process boundaries
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        shard, img_m, cls_m = self.samples[index]
        img = open_image(self._read(shard, img_m), name=f"{self.shards[shard]}:{img_m.name}",
                         convert=True)
        gen = item_generator(seed) if (self.train and seed is not None) else None
        img = random_crop_resize(
            img, self.image_size, gen, self.resize_short, self.random_flip, self.scale_range
        )
        label = int(self._read(shard, cls_m).decode().strip()) if cls_m is not None else -1
        return {"image": img, "label": label, "index": index}
