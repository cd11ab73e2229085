"""Video I/O on the shared clips: counts/fps/shapes vs container metadata, sampling, errors."""

from __future__ import annotations

import av
import pytest
import torch
from conftest import shared_path

from visualtok.data.video import VideoClipDataset
from visualtok.video.io import (
    frame_grid,
    frame_times,
    probe,
    read_video,
    read_videos,
    sample_indices,
    save_frame_grid,
    write_video,
)

# (file, frames decoded, fps, width, height); MANIFEST.md of ../shared/data/video
CLIPS = [
    ("mdn_flower.mp4", 150, 30000 / 1001, 960, 540),
    ("mdn_flower.webm", 150, 30000 / 1001, 960, 540),
    ("mdn_friday.mp4", 185, 30.0, 640, 480),
    ("mdn_stream-of-water.mp4", 90, 30000 / 1001, 480, 360),
    ("mdn_stream-of-water.webm", 90, 30000 / 1001, 480, 360),
    ("bbb_432_433s_720p.webm", 24, 24.0, 1280, 720),
]


def _container(path):
    """Metadata read straight from the container with PyAV (independent of our code)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.frames, float(s.average_rate), s.width, s.height, c.duration / 1e6


@pytest.mark.parametrize("name,frames,fps,w,h", CLIPS)
def test_probe_and_counts_match_container(name, frames, fps, w, h):
    path = shared_path("data", "video", name)
    declared, rate, cw, ch, duration = _container(path)
    info = probe(path)
    assert (info.width, info.height) == (cw, ch) == (w, h)
    assert info.fps == pytest.approx(rate) and info.fps == pytest.approx(fps, rel=1e-3)
    assert info.declared_frames == declared
    t = frame_times(path)
    if declared:  # mp4 declares its frame count: we decode exactly that many
        assert len(t) == declared == frames
    else:  # WebM declares none; VP8 alt-ref packets carry no picture, so packets over-count
        assert len(t) == frames
    assert bool((t[1:] > t[:-1]).all()) and float(t[0]) == 0.0
    # frames span the declared duration at the declared rate
    assert float(t[-1]) + 1 / fps == pytest.approx(duration, abs=0.2)
    assert float(t[-1]) == pytest.approx((frames - 1) / fps, abs=0.05)


def test_read_shapes_and_sampling():
    path = shared_path("data", "video", "mdn_stream-of-water.mp4")
    full = read_video(path, sampling="all")
    assert full.shape == (90, 3, 360, 480) and full.dtype == torch.float32
    assert 0.0 <= float(full.min()) and float(full.max()) <= 1.0 and float(full.std()) > 0.05
    with av.open(str(path)) as c:  # frame 17 decoded independently with PyAV
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][17]
    assert torch.equal((full[17] * 255).round().to(torch.uint8).permute(1, 2, 0),
                       torch.from_numpy(ref))
    uni = read_video(path, 5)  # uniform: first, last and three evenly spaced frames between
    assert torch.equal(uni, full[[0, 22, 44, 67, 89]])
    st = read_video(path, 4, "stride", stride=3, start=10)
    assert torch.equal(st, full[[10, 13, 16, 19]])
    # fps resampling: each output time takes the frame on screen then
    idx = sample_indices(frame_times(path), 10, "fps", fps=10.0)  # 29.97 fps source
    assert idx.tolist() == [int(j / 10 * 30000 / 1001) for j in range(10)]  # [0, 2, 5, 8, ...]
    friday = frame_times(shared_path("data", "video", "mdn_friday.mp4"))  # exactly 30 fps
    assert sample_indices(friday, None, "fps", fps=10.0).tolist() == list(range(0, 185, 3))
    small = read_video(path, 4, "stride", stride=3, start=10, size=48, crop=(32, 40))
    assert small.shape == (4, 3, 32, 40)  # short side 360 -> 48 (64x48), then centre crop
    batch = read_videos([path, shared_path("data", "video", "mdn_flower.webm")], num_frames=3,
                        size=64, crop=64)
    assert batch.shape == (2, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="do not fit"):
        read_video(path, 40, "stride", stride=3)
    with pytest.raises(ValueError, match="sampling must be one of"):
        read_video(path, 4, "random")
    with pytest.raises(ValueError, match="crop 400x400 is larger"):
        read_video(path, 2, crop=400)


def test_seek_read_equals_sequential_read():
    path = shared_path("data", "video", "bbb_432_433s_720p.webm")
    full = read_video(path, sampling="all", size=72)
    assert full.shape == (24, 3, 72, 128)
    assert torch.equal(read_video(path, indices=[20, 5, 21], size=72), full[[20, 5, 21]])


def test_unreadable_empty_truncated_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4 is empty"):
        probe(empty)
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="junk.webm"):
        read_video(junk, 2)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4", 2)
    for name in ("mdn_friday.mp4", "mdn_flower.webm"):
        data = shared_path("data", "video", name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=f"cut_{name}.*(truncated|not a readable)"):
            frame_times(cut)
    # the dataset reports the bad file instead of skipping it
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "junk2.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="junk2.mp4"):
        VideoClipDataset(tmp_path / "ds", 32, num_frames=2)


def test_write_read_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(5, 3, 24, 30, generator=g)
    lossless = write_video(tmp_path / "x.mkv", video, fps=12)
    back = read_video(lossless, sampling="all")
    assert torch.equal(back, (video * 255).round() / 255)  # FFV1 RGB: bit exact
    assert probe(lossless).fps == pytest.approx(12.0) and len(frame_times(lossless)) == 5
    real = read_video(shared_path("data", "video", "mdn_flower.mp4"), 6, size=64, crop=64)
    mp4 = write_video(tmp_path / "y.mp4", real, fps=30000 / 1001)
    back = read_video(mp4, sampling="all")
    assert back.shape == real.shape and float((back - real).abs().mean()) < 0.03  # lossy H.264
    assert probe(mp4).fps == pytest.approx(30000 / 1001, rel=1e-4)
    with pytest.raises(ValueError, match="even frame sides"):
        write_video(tmp_path / "odd.mp4", torch.rand(2, 3, 7, 8), fps=10)
    with pytest.raises(ValueError, match="zero frames"):
        write_video(tmp_path / "z.mkv", torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        write_video(tmp_path / "w.mkv", torch.rand(2, 8, 8, 3))


def test_frame_grid(tmp_path):
    video = torch.rand(2, 10, 3, 16, 20)
    grid = frame_grid(video, max_frames=4, padding=2)
    assert grid.shape == (3, 2 * 18 + 2, 4 * 22 + 2)
    assert torch.equal(grid[:, 2:18, 2:22], video[0, 0]) and torch.equal(
        grid[:, 20:36, 68:88], video[1, 9])
    out = save_frame_grid(tmp_path / "g.png", video[0])
    assert out.is_file()


def test_dataset_reads_real_clips():
    root = shared_path("data", "video")
    ds = VideoClipDataset(root, 32, num_frames=4, frame_stride=2, train=True)
    names = sorted(p.name for p, _ in ds.sources if p.is_file())
    assert "mdn_flower.webm" in names and len(names) == 7
    counts = {p.name: n for p, n in ds.sources}
    assert counts["mdn_stream-of-water.webm"] == 90 and counts["bbb_0_30s_720p.webm"] == 720
    i = [p.name for p, _ in ds.sources].index("mdn_friday.mp4")
    item = ds[(i, 3)]
    assert item["video"].shape == (4, 3, 32, 32) and item["index"] == i
    assert torch.equal(ds[(i, 3)]["video"], item["video"])  # seeded start


def test_synthetic_pan_zoom_clips(tmp_path):
    from skimage import data as skdata

    from visualtok.data import build_dataset
    from visualtok.data.synthetic_video import pan_zoom_clip
    from visualtok.train.config import DataConfig

    photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 255
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    clip = pan_zoom_clip(photo, 8, 32, g())
    assert clip.shape == (8, 3, 32, 32) and 0 <= float(clip.min()) and float(clip.max()) <= 1
    assert torch.equal(clip, pan_zoom_clip(photo, 8, 32, g()))  # seeded
    step = (clip[1:] - clip[:-1]).abs().mean()
    assert 0 < float(step) < float((clip[-1] - clip[0]).abs().mean())  # smooth motion
    from visualtok.data.image_io import save_image

    save_image(photo, tmp_path / "astronaut.png")
    ds = build_dataset(DataConfig(type="video_synthetic", path=str(tmp_path), image_size=32,
                                  num_frames=4))
    item = ds[(0, 5)]
    assert item["video"].shape == (4, 3, 32, 32) and torch.equal(ds[(0, 5)]["video"],
                                                                 item["video"])
