"""Video I/O on PyAV (FFmpeg bindings, wheels bundle FFmpeg: no system step).

* ``probe(path) -> VideoInfo``: container metadata, no decoding (fps, size, duration, codec and
  the frame count the container declares, which WebM/VP8 does not).
* ``frame_times(path)``: presentation times of every *displayed* frame, by one decode pass without
  colour conversion. It is the exact frame count (VP8 "alt-ref" packets carry no picture, so
  packets over-count) and the basis of the samplers.
* ``read_video(path, ...) -> [T, 3, H, W]`` float in [0, 1] and ``read_videos(paths) -> [B, T, 3,
  H, W]``: frame sampling ``"all"`` | ``"uniform"`` (T evenly spaced frames over the clip) |
  ``"stride"`` (every ``stride``-th frame from ``start``) | ``"fps"`` (resampled to ``fps`` by
  presentation time: each output time takes the frame on screen then), then resize (``size``: short
  side, or exact ``(H, W)``) and centre crop (``crop``). Decoding seeks to the key frame before the
  first wanted frame and converts only the wanted frames.
* ``write_video(path, video, fps)``: ``.mp4`` H.264 / ``.webm`` VP9 (yuv420p, even sides) or
  ``.mkv`` FFV1 (lossless RGB); ``frame_grid`` / ``save_frame_grid``: frames as one picture.

Every failure names the file: missing, empty, not a video, no video stream, or truncated (fewer
frames than the container declares, or the last frame long before the declared duration).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "VideoInfo",
    "probe",
    "frame_times",
    "sample_indices",
    "read_video",
    "read_videos",
    "write_video",
    "frame_grid",
    "save_frame_grid",
    "check_video",
    "SAMPLING_MODES",
]

SAMPLING_MODES = ("all", "uniform", "stride", "fps")
_TRUNCATION_SLACK_S = 0.5  # declared duration may exceed the last frame by audio tails / rounding


@dataclass(frozen=True)
class VideoInfo:
    """Container metadata of the first video stream (no decoding)."""

    path: str
    width: int
    height: int
    fps: float  # average frame rate
    duration: float | None  # seconds, container (or stream) duration when declared
    codec: str
    declared_frames: int  # frame count written in the container (0 when it declares none: WebM)


def _av():
    try:
        import av
    except ImportError as e:  # a pinned dependency: only a broken install gets here
        raise ImportError("video I/O needs PyAV: pip install av") from e
    return av


def _open(path: str | Path):
    """Open ``path`` for reading; return ``(container, video_stream)`` or a ValueError naming it."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"video file {path} is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read video file {path}: not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"video file {path} has no video stream")
    # no frame threading: freeing a frame-threaded decoder after an early stop (we break out of
    # decode once the wanted frames are in) can deadlock inside FFmpeg
    return container, container.streams.video[0]


def probe(path: str | Path) -> VideoInfo:
    """Metadata of ``path``'s first video stream, read from the container without decoding."""
    container, s = _open(path)
    try:
        rate = s.average_rate or s.guessed_rate
        if not rate or s.width <= 0 or s.height <= 0:
            raise ValueError(f"video file {path} declares no frame rate or frame size")
        duration = None
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        return VideoInfo(str(path), s.width, s.height, float(rate), duration,
                         s.codec_context.name, int(s.frames or 0))
    finally:
        container.close()


def _decode_error(path: Path, count: int, e: Exception) -> ValueError:
    return ValueError(f"video file {path} is corrupt or truncated: decoding failed after "
                      f"{count} frames ({e})")


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _frame_pts(key: tuple[str, int, int]) -> tuple[tuple[int, ...], Fraction]:
    """Sorted pts of the displayed frames and the stream time base (cached per file version)."""
    av, path = _av(), Path(key[0])
    info = probe(path)
    container, s = _open(path)
    pts: list[int] = []
    try:
        for frame in container.decode(s):
            if frame.pts is not None:
                pts.append(frame.pts)
    except av.error.FFmpegError as e:
        raise _decode_error(path, len(pts), e) from e
    finally:
        container.close()
    if not pts:
        raise ValueError(f"video file {path} has zero decodable frames")
    pts.sort()
    tb = Fraction(s.time_base)
    _check_complete(path, info, torch.tensor(pts, dtype=torch.float64) * float(tb))
    return tuple(pts), tb


def frame_times(path: str | Path) -> torch.Tensor:
    """Presentation times (seconds from the first frame, float64 ``[N]``, ascending) of every
    displayed frame: ``N`` is the exact frame count.

    One decode pass without colour conversion, cached per file (path, size, mtime). Raises if the
    file yields no frame or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    pts, tb = _frame_pts(_stat_key(path))
    t = torch.tensor(pts, dtype=torch.float64) * float(tb)
    return t - t[0]


def _check_complete(path: Path, info: VideoInfo, t: torch.Tensor) -> None:
    if info.declared_frames and len(t) < info.declared_frames:
        raise ValueError(f"video file {path} is truncated: {len(t)} frames decoded, the container "
                         f"declares {info.declared_frames}")
    if info.duration:
        end = float(t[-1] - t[0]) + 1.0 / info.fps
        if info.duration - end > max(_TRUNCATION_SLACK_S, 0.05 * info.duration):
            raise ValueError(f"video file {path} is truncated: frames end at {end:.2f} s, the "
                             f"container declares {info.duration:.2f} s")


def sample_indices(
    times: torch.Tensor,
    num_frames: int | None = None,
    sampling: str = "uniform",
    stride: int = 1,
    fps: float | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Frame indices ``[T]`` (int64) into a clip with presentation ``times [N]``.

    ``"all"``: every frame from ``start``; ``"uniform"``: ``num_frames`` evenly spaced over the
    whole clip (first and last included); ``"stride"``: ``start, start + stride, ...``;
    ``"fps"``: output times ``t_start + j / fps``, each taking the last frame shown at or before
    it. ``num_frames`` caps stride/fps/all (None: as many as fit) and is required for uniform.
    """
    n = len(times)
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}; got {sampling!r}")
    if num_frames is not None and (isinstance(num_frames, bool) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int or None; got {num_frames!r}")
    if not 0 <= start < n:
        raise ValueError(f"start frame {start} is outside the clip's {n} frames")
    if sampling == "uniform":
        if num_frames is None:
            raise ValueError("uniform sampling needs num_frames")
        idx = torch.linspace(start, n - 1, num_frames, dtype=torch.float64).round().long()
    elif sampling == "fps":
        if fps is None or not fps > 0:
            raise ValueError(f"fps sampling needs fps > 0; got {fps!r}")
        span = float(times[-1] - times[start])
        count = int(math.floor(span * fps + 1e-9)) + 1
        count = count if num_frames is None else min(count, num_frames)
        targets = times[start] + torch.arange(count, dtype=torch.float64) / fps
        idx = torch.searchsorted(times, targets + 1e-6, right=True) - 1
    else:
        step = 1 if sampling == "all" else stride
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"stride must be an int >= 1; got {stride!r}")
        idx = torch.arange(start, n, step)
        idx = idx if num_frames is None else idx[:num_frames]
    if num_frames is not None and sampling in ("stride", "fps") and len(idx) < num_frames:
        raise ValueError(f"clip has {n} frames: {num_frames} frames with {sampling} sampling "
                         f"from frame {start} do not fit (got {len(idx)})")
    return idx.clamp_(0, n - 1)


def _resize_crop(x: torch.Tensor, size, crop) -> torch.Tensor:
    """``[T, 3, H, W]`` float -> resized (short side int / exact ``(H, W)``), centre-cropped."""
    if size is not None:
        h, w = x.shape[-2:]
        if isinstance(size, int):
            s = size / min(h, w)
            th, tw = max(1, round(h * s)), max(1, round(w * s))
        else:
            th, tw = int(size[0]), int(size[1])
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0, 1)
    if crop is not None:
        ch, cw = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
        h, w = x.shape[-2:]
        if ch > h or cw > w:
            raise ValueError(f"crop {ch}x{cw} is larger than the (resized) frames {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top : top + ch, left : left + cw]
    return x.contiguous()


def _check_geometry(size, crop) -> None:
    for name, v in (("size", size), ("crop", crop)):
        if v is None:
            continue
        ok = (isinstance(v, int) and not isinstance(v, bool) and v > 0) or (
            isinstance(v, Sequence) and len(v) == 2 and all(isinstance(a, int) and a > 0 for a in v)
        )
        if not ok:
            raise ValueError(f"{name} must be a positive int or (H, W); got {v!r}")


def read_video(
    path: str | Path,
    num_frames: int | None = None,
    sampling: str = "uniform",
    stride: int = 1,
    fps: float | None = None,
    start: int = 0,
    size: int | tuple[int, int] | None = None,
    crop: int | tuple[int, int] | None = None,
    indices: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode ``path`` into ``[T, 3, H, W]`` float32 in [0, 1] (RGB).

    Frames are picked by ``sample_indices`` (``sampling="uniform"`` needs ``num_frames``; with
    ``num_frames=None`` and uniform sampling every frame is read), or given as ``indices``; then
    each frame is resized (``size``: short side int, or exact ``(H, W)``; antialiased bicubic) and
    centre-cropped (``crop``).
    """
    av, path = _av(), Path(path)
    _check_geometry(size, crop)
    times = frame_times(path)
    if indices is None:
        if sampling == "uniform" and num_frames is None:
            sampling = "all"
        idx = sample_indices(times, num_frames, sampling, stride, fps, start)
    else:
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if len(idx) == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(times):
            raise ValueError(f"indices must be non-empty and in [0, {len(times)}) for {path}")
    pts, _ = _frame_pts(_stat_key(path))
    index_of = {p: i for i, p in enumerate(pts)}
    wanted = set(idx.tolist())
    decoded: dict[int, torch.Tensor] = {}
    first = pts[min(wanted)]
    for attempt in ("seek", "from_start"):
        container, s = _open(path)
        try:
            if attempt == "seek" and first != pts[0]:
                container.seek(first, stream=s, backward=True, any_frame=False)
            for frame in container.decode(s):
                i = index_of.get(frame.pts)
                if i is None:
                    continue
                if attempt == "seek" and not decoded and frame.pts > first:
                    break  # the seek overshot the first wanted frame: decode from the start
                if i in wanted and i not in decoded:
                    rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    x = rgb.permute(2, 0, 1)[None].float().div_(255.0)
                    decoded[i] = _resize_crop(x, size, crop)[0]
                    if len(decoded) == len(wanted):
                        break
        except av.error.FFmpegError as e:
            raise _decode_error(path, len(decoded), e) from e
        finally:
            container.close()
        if decoded:
            break
    missing = sorted(i for i in wanted if i not in decoded)
    if missing:
        raise ValueError(f"video file {path}: frames {missing[:5]} could not be decoded")
    return torch.stack([decoded[i] for i in idx.tolist()])


def read_videos(paths: Sequence[str | Path], **kwargs) -> torch.Tensor:
    """``read_video`` on each path, stacked to ``[B, T, 3, H, W]`` (needs equal T, H, W: give
    ``num_frames`` and ``size``/``crop``)."""
    if isinstance(paths, (str, Path)) or len(paths) == 0:
        raise ValueError("read_videos needs a non-empty list of paths")
    clips = [read_video(p, **kwargs) for p in paths]
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips differ in shape {sorted(shapes)}: pass num_frames and crop/size")
    return torch.stack(clips)


def check_video(video: object, name: str = "video", batched: bool | None = None) -> torch.Tensor:
    """Validate a video ``[T, 3, H, W]`` / ``[B, T, 3, H, W]`` float in [0, 1] or uint8.

    Returns float32 in [0, 1]. ``batched`` True/False requires the 5-D/4-D form.
    """
    if not isinstance(video, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor [B, T, 3, H, W]; got {type(video).__name__}"
        )
    ranks = {None: (4, 5), True: (5,), False: (4,)}[batched]
    if video.ndim not in ranks or video.shape[-3] != 3:
        want = " or ".join({4: "[T, 3, H, W]", 5: "[B, T, 3, H, W]"}[r] for r in ranks)
        raise ValueError(f"{name} must be {want} (frames channel-first RGB); got shape "
                         f"{tuple(video.shape)}")
    if video.shape[-4] == 0:
        raise ValueError(f"{name} has zero frames (shape {tuple(video.shape)})")
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    if not video.is_floating_point():
        raise TypeError(f"{name} must be float in [0, 1] or uint8; got {video.dtype}")
    if video.numel() and not torch.isfinite(video).all():
        raise ValueError(f"{name} contains NaN or inf")
    if video.numel() and (video.min() < 0 or video.max() > 1):
        raise ValueError(f"{name} must be in [0, 1]; got [{float(video.min()):.3g}, "
                         f"{float(video.max()):.3g}]")
    return video.float()


_ENCODERS = {  # suffix -> (codec, pix_fmt, options)
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".mov": ("libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0"}),
    ".mkv": ("ffv1", "bgr0", {}),
}


def write_video(path: str | Path, video: torch.Tensor, fps: float = 24.0) -> Path:
    """Write ``[T, 3, H, W]`` (float [0, 1] or uint8) to ``path``.

    ``.mp4``/``.mov``: H.264 (crf 18), ``.webm``: VP9, both yuv420p (even H and W required);
    ``.mkv``: FFV1, lossless RGB (any size; reads back bit-exactly).
    """
    av, path = _av(), Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ENCODERS:
        raise ValueError(f"cannot write {path}: suffix must be one of {sorted(_ENCODERS)}")
    v = check_video(video, "video", batched=False)
    if not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps!r}")
    codec, pix_fmt, options = _ENCODERS[suffix]
    h, w = v.shape[-2:]
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"{suffix} (yuv420p) needs even frame sides; got {h}x{w}: crop, or "
                         "write .mkv (lossless, any size)")
    frames = (v * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for a in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def frame_grid(video: torch.Tensor, max_frames: int = 8, padding: int = 2) -> torch.Tensor:
    """``[T, 3, H, W]`` or ``[B, T, 3, H, W]`` -> one picture ``[3, H', W']``: one row per clip,
    ``max_frames`` frames evenly spaced over T (white padding)."""
    v = check_video(video, "video")
    v = v[None] if v.ndim == 4 else v
    b, t, _, h, w = v.shape
    idx = torch.linspace(0, t - 1, min(t, max_frames)).round().long()
    v = v[:, idx].detach().cpu()
    n = len(idx)
    canvas = torch.ones(3, b * (h + padding) + padding, n * (w + padding) + padding)
    for i in range(b):
        for j in range(n):
            y, x = padding + i * (h + padding), padding + j * (w + padding)
            canvas[:, y : y + h, x : x + w] = v[i, j]
    return canvas


def save_frame_grid(path: str | Path, video: torch.Tensor, max_frames: int = 8) -> Path:
    """Save ``frame_grid(video)`` as an image file (PNG/JPEG by suffix)."""
    from .image_io import save_image

    return save_image(frame_grid(video, max_frames), path)
