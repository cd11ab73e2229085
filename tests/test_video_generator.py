"""The generator trains on TiTok3D codes like on any 1D codes: real clips -> titok3d_tiny codes ->
token shards -> GPT on the shared trainer (loss falls) -> sampled codes -> decoded videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _train_helpers import train_gpt_tiny_on_tokens
from conftest import shared_path

import visualtok
from visualtok.data.video_io import read_video, read_videos, write_video
from visualtok.generate.pipeline import generate_images
from visualtok.generate.tokens import TokenDataset, labels_from_folders, pretokenize_videos

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def video_tokens(tmp_path_factory):
    """Six 8-frame 32x32 clips cut from three real clips (two class folders), a random
    titok3d_tiny, and its token shards."""
    root = tmp_path_factory.mktemp("vgen")
    files = []
    for j, name in enumerate(["mdn_flower.mp4", "mdn_friday.mp4", "mdn_stream-of-water.mp4"]):
        frames = read_video(shared_path("data", "video", name), indices=range(16), size=32,
                            crop=32)
        for half in range(2):
            path = root / "clips" / ("a" if j < 2 else "b") / f"{j}_{half}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            files.append(write_video(path, frames[8 * half : 8 * half + 8], fps=8))
    files = sorted(files)
    labels, classes = labels_from_folders(root / "clips", files)
    torch.manual_seed(0)
    tok = visualtok.create_model("titok3d_tiny").eval()
    written = pretokenize_videos(tok, files, root / "tokens", labels, classes, batch_size=4,
                                 shard_size=4)
    return root, tok, files, labels, written


def test_video_token_shards_hold_the_tokenizer_codes(video_tokens):
    root, tok, files, labels, written = video_tokens
    assert [p.name for p in written] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    ds = TokenDataset(root / "tokens")
    with torch.no_grad():
        want = tok.encode(read_videos(files, num_frames=8, size=32, crop=(32, 32)))
    assert torch.equal(ds.codes, want) and ds.codes.shape == (6, 16, 4)
    assert ds.meta["num_frames"] == 8 and ds.layout == tok.code_layout
    assert ds.labels.tolist() == labels == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="no video files"):
        pretokenize_videos(tok, [], root / "none")
    # the same through train/pretokenize.py --videos (a saved tokenizer)
    import importlib.util

    tok.save_pretrained(root / "tok")
    spec = importlib.util.spec_from_file_location("pretok", REPO / "train" / "pretokenize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--tokenizer", str(root / "tok"), "--videos", str(root / "clips"), "--out",
                 str(root / "tokens_cli"), "--device", "cpu"])
    assert torch.equal(TokenDataset(root / "tokens_cli").codes, want)
    (root / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="junk.mp4"):
        pretokenize_videos(tok, [root / "junk.mp4"], root / "junk_tokens")


def test_gpt_trains_on_titok3d_codes_samples_and_decodes_videos(video_tokens, tmp_path):
    root, tok, *_ = video_tokens
    radices = list(tok.code_layout.radices)  # FSQ 8-5-5-5: four factors per token
    _, model_dir, (first, last) = train_gpt_tiny_on_tokens(
        root / "tokens", tmp_path / "run", steps=40, batch_size=6,
        radices=radices, num_tokens=16, num_classes=2)
    assert last < 0.6 * first, (first, last)

    gpt = visualtok.load(model_dir)
    g = torch.Generator().manual_seed(0)
    codes = gpt.generate(torch.tensor([0, 1]), num_tokens=16, generator=g)
    assert codes.shape == (2, 16, 4)
    assert bool((codes >= 0).all()) and bool((codes < torch.tensor(radices)).all())
    videos = generate_images(gpt, tok, torch.tensor([0, 1]), generator=g, top_k=20)
    assert videos.shape == (2, 8, 3, 32, 32) and 0 <= videos.min() and videos.max() <= 1
    prefix = generate_images(gpt, tok, torch.tensor([1]), num_tokens=8, generator=g)
    assert prefix.shape == (1, 8, 3, 32, 32)  # TiTok3D decodes a prefix of its 1D tokens
