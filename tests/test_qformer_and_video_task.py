"""Direct tests of the Q-Former layer (ReTok's 2D <-> 1D bridge) and the video tokenizer task's
input contract; both are also covered end to end by ReTok parity and TiTok3D training."""

from __future__ import annotations

import pytest
import torch

from visualtok import create_model
from visualtok.config import config_from_dict
from visualtok.nn.qformer import QFormerLayer
from visualtok.train.config import TokenizerLossConfig, TrainConfig
from visualtok.train.video_task import VideoTokenizerTask


def test_qformer_cross_attention_is_invariant_to_memory_order_and_uses_positions():
    torch.manual_seed(0)
    layer = QFormerLayer(dim=16, num_heads=4).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    pos, query_pos = torch.randn(7, 16), torch.randn(5, 16)
    out = layer(x, memory, pos=pos, query_pos=query_pos)
    assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
    perm = torch.randperm(7)  # keys/values carry their positions: the set, not the order, counts
    torch.testing.assert_close(layer(x, memory[:, perm], pos=pos[perm], query_pos=query_pos), out)
    zeros = layer(x, memory, pos=torch.zeros(7, 16), query_pos=torch.zeros(5, 16))
    torch.testing.assert_close(zeros, layer(x, memory))  # zero positions == no positions
    assert not torch.allclose(layer(x, memory, query_pos=query_pos), layer(x, memory))
    memory.requires_grad_(True)
    layer(x, memory, pos=pos).sum().backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0


def _train_config(**loss) -> TrainConfig:
    return config_from_dict(TrainConfig, {
        "task": "video_tokenizer", "model": {"name": "titok3d_tiny"},
        "data": {"type": "video", "path": ".", "image_size": 32, "num_frames": 8},
        "loss": loss})


def test_video_task_refuses_image_models_image_losses_and_image_batches():
    video_model = create_model("titok3d_tiny")
    with pytest.raises(TypeError, match="needs a video tokenizer; got TiTok"):
        VideoTokenizerTask(create_model("titok_tiny"), TokenizerLossConfig(), _train_config())
    with pytest.raises(ValueError, match="gan_weight"):
        VideoTokenizerTask(video_model, TokenizerLossConfig(gan_weight=0.1), _train_config())
    task = VideoTokenizerTask(video_model, TokenizerLossConfig(), _train_config())
    with pytest.raises(ValueError, match="must hold 'video'"):
        task.compute_loss("model", {"image": torch.rand(2, 3, 32, 32)}, 0)
    out = task.compute_loss("model", {"video": torch.rand(2, 8, 3, 32, 32)}, 0)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
