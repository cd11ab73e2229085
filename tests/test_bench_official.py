"""The official-code reference of the benchmarks: the LlamaGen key map, the position-table copy,
the checkout import guard, and (slow, needs /tmp/official) parity against the official code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks._common import time_interleaved
from benchmarks.official import (
    import_from_checkout,
    llamagen_gpt_state_dict,
    match_llamagen_positions,
)
from visualtok import create_model
from visualtok.hub import CheckpointError, load_state_dict_strict

OFFICIAL = Path("/tmp/official")


def llamagen_names(layers: int, dim: int, hidden: int, vocab: int, classes: int) -> dict:
    """A state dict with LlamaGen's c2i ``Transformer`` names and shapes, written out by hand."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "cls_embedding.embedding_table.weight": (classes + 1, dim),
        "tok_embeddings.weight": (vocab, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
    }
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wqkv.weight": (3 * dim, dim),
            p + "attention.wo.weight": (dim, dim),
            p + "feed_forward.w1.weight": (hidden, dim),
            p + "feed_forward.w3.weight": (hidden, dim),
            p + "feed_forward.w2.weight": (dim, hidden),
            p + "attention_norm.weight": (dim,),
            p + "ffn_norm.weight": (dim,),
            # setup_caches registers these buffers; they are state, not weights
            p + "attention.kv_cache.k_cache": (1, 4, 40, dim // 4),
            p + "attention.kv_cache.v_cache": (1, 4, 40, dim // 4),
        }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_llamagen_key_map_fills_every_weight_of_our_gpt():
    model = create_model("gpt_tiny").eval()  # 2 x 64, vocab 1024, 10 classes, SwiGLU 192
    sd = llamagen_names(layers=2, dim=64, hidden=192, vocab=1024, classes=10)
    load_state_dict_strict(model, llamagen_gpt_state_dict(sd, model), source="test")
    own = model.state_dict()
    assert torch.equal(own["class_embedding.weight"], sd["cls_embedding.embedding_table.weight"])
    assert torch.equal(own["embed.embedding.weight"], sd["tok_embeddings.weight"])
    assert torch.equal(own["head.output.weight"], sd["output.weight"])
    assert torch.equal(own["layers.1.attention.qkv.weight"], sd["layers.1.attention.wqkv.weight"])
    assert torch.equal(own["layers.0.attention.proj.weight"], sd["layers.0.attention.wo.weight"])
    w2 = "layers.1.feed_forward.w2.weight"
    assert torch.equal(own[w2], sd[w2])


def test_llamagen_key_map_names_unknown_missing_and_misshaped_keys():
    model = create_model("gpt_tiny").eval()
    sd = llamagen_names(layers=2, dim=64, hidden=192, vocab=1024, classes=10)
    with pytest.raises(CheckpointError, match="layers.2.attention.wo.weight"):
        llamagen_gpt_state_dict({**sd, "layers.2.attention.wo.weight": torch.zeros(64, 64)}, model)
    missing = {k: v for k, v in sd.items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match="norm.weight"):
        llamagen_gpt_state_dict(missing, model)
    wrong = {**sd, "tok_embeddings.weight": torch.zeros(512, 64)}  # another vocabulary
    with pytest.raises(CheckpointError, match="embed.embedding.weight"):
        llamagen_gpt_state_dict(wrong, model)


def test_position_table_copy_and_its_shape_check():
    model = create_model("gpt_tiny").eval()  # 32 tokens, head_dim 16
    table = torch.randn(33, 8, 2)
    match_llamagen_positions(model, table)
    assert torch.equal(model.rope_cos, table[:32, :, 0])
    assert torch.equal(model.rope_sin, table[:32, :, 1])
    with pytest.raises(ValueError, match="freqs_cis"):
        match_llamagen_positions(model, torch.randn(33, 16, 2))


def test_import_from_checkout_refuses_a_directory_that_is_not_the_checkout(tmp_path):
    with pytest.raises(ValueError, match="not a checkout"):
        import_from_checkout(tmp_path, "modeling.titok", "modeling/titok.py")


def test_time_interleaved_runs_every_contender_each_round():
    calls: list[str] = []
    cpu: dict[str, float] = {}
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                         warmup=1, repeats=3, cpu=cpu)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(t) == set(cpu) == {"a", "b"} and all(v >= 0 for v in [*t.values(), *cpu.values()])


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "LlamaGen").is_dir(), reason="no /tmp/official/LlamaGen")
def test_llamagen_gpt_b_greedy_tokens_identical():
    from benchmarks.official import build_official_gpt

    torch.set_num_threads(1)
    pair = build_official_gpt(OFFICIAL / "LlamaGen")
    labels = torch.tensor([207, 360])
    for cfg in (None, 2.0):
        ref = pair.generate(labels, 16, cfg, greedy=True).long()
        ours = pair.ours.generate(labels, num_tokens=16, cfg_scale=cfg, temperature=0.0)[..., 0]
        assert torch.equal(ref, ours), cfg


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "1d-tokenizer").is_dir(), reason="no 1d-tokenizer checkout")
def test_official_titok_s128_codes_and_decode_match():
    from benchmarks.official import build_official_titok, kodak_photos

    pytest.importorskip("omegaconf")
    torch.set_num_threads(1)
    pair = build_official_titok(OFFICIAL / "1d-tokenizer", "titok_s128")
    x = kodak_photos(2)
    with torch.no_grad():
        codes = pair.ours.encode(x)
        assert torch.equal(pair.encode(x), codes)
        diff = (pair.decode(codes) - pair.ours.decode(codes)).abs().max()
    assert diff < 1e-4
