"""GPT generator: KV-cache exactness, CFG contract, variable length, errors, checkpoints."""

from __future__ import annotations

import pytest
import torch

import visualtok
from visualtok import create_model
from visualtok.generate.gpt import GPT
from visualtok.quantize.layout import CodeLayout

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_heads(model: GPT) -> GPT:
    """Zero-initialised output heads make every logit 0; give them weights so comparisons bite."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


LAYOUTS = {
    "flat": (CodeLayout((64,)), "flat"),
    "factor": (CodeLayout((8, 5, 5, 5), "fsq"), "factor"),
    "bit": (CodeLayout((16,) * 4, "lfq"), "bit"),
}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_kv_cache_gives_the_logits_of_the_no_cache_path(kind):
    layout, head = LAYOUTS[kind]
    model = _randomize_heads(create_model("gpt_tiny", layout=layout, head=head, num_tokens=12))
    B, N = 3, 12
    codes = torch.stack([torch.randint(0, r, (B, N)) for r in layout.radices], -1)
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
        full = model.hidden_states(codes, labels)  # [B, N, D], no cache
        model.setup_cache(B)
        steps = [model.step(model.condition(labels, B), torch.tensor([0]))[:, -1]]
        for t in range(N - 1):
            x = model.embed_codes(codes[:, t : t + 1])
            steps.append(model.step(x, torch.tensor([t + 1]))[:, -1])
    cached = torch.stack(steps, 1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    if kind == "flat":  # the logits themselves, every step
        torch.testing.assert_close(
            model.head.logits(cached), model.head.logits(full), atol=1e-5, rtol=0
        )
    elif kind == "factor":
        flat_h, flat_c = cached.reshape(B * N, -1), codes.reshape(B * N, -1)
        ref = model.head.logits(full.reshape(B * N, -1), flat_c[:, :-1])
        torch.testing.assert_close(
            model.head.logits(flat_h, flat_c[:, :-1]), ref, atol=1e-5, rtol=0
        )
    assert not torch.allclose(full[:, 0], full[:, 1])  # positions really differ


def test_cached_step_prefix_attention_equals_the_static_masked_buffer(monkeypatch):
    """Eager CPU steps attend to the written prefix only; the static path (whole buffer + causal
    mask, what torch.compile and GPUs run) gives the same states, also for a multi-token step."""
    model = create_model("gpt_tiny", num_tokens=12).eval()
    B = 2
    labels = torch.tensor([1, 7])
    x = torch.randn(B, 4, model.config.dim)

    def run():
        model.setup_cache(B)
        out = [model.step(model.condition(labels, B), torch.tensor([0]))]
        out.append(model.step(x[:, :3], torch.tensor([1, 2, 3])))  # a 3-token step, masked
        out.append(model.step(x[:, 3:], torch.tensor([4])))
        return torch.cat(out, 1)

    with torch.no_grad():
        prefix = run()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the static path
        static = run()
    torch.testing.assert_close(prefix, static, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
@pytest.mark.parametrize("cfg_scale", [None, 3.0])
def test_cached_and_uncached_sampling_agree(kind, cfg_scale):
    layout, head = LAYOUTS[kind]
    model = _randomize_heads(create_model("gpt_tiny", layout=layout, head=head, num_tokens=10))
    labels = torch.tensor([1, 2])
    out = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        out.append(model.generate(labels, generator=g, use_cache=use_cache, cfg_scale=cfg_scale))
    assert out[0].shape == (2, 10, layout.num_factors)
    assert torch.equal(out[0], out[1])
    layout.validate(out[0])


def test_cfg_scale_one_equals_conditional_sampling():
    model = _randomize_heads(create_model("gpt_tiny", num_tokens=16))
    labels = torch.tensor([3, 5, 7, 3])
    runs = {}
    for scale in (None, 1.0, 4.0):
        g = torch.Generator().manual_seed(11)
        runs[scale] = model.generate(labels, generator=g, cfg_scale=scale)
    assert torch.equal(runs[None], runs[1.0])  # CFG path with s=1: exactly the conditional samples
    assert not torch.equal(runs[None], runs[4.0])  # guidance does change samples


def test_sampling_is_reproducible_under_a_seed():
    model = _randomize_heads(create_model("gpt_tiny"))
    labels = torch.arange(4)

    def run(seed):
        return model.generate(
            labels, generator=torch.Generator().manual_seed(seed), top_k=50, top_p=0.9
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_variable_length_generates_a_prefix():
    model = _randomize_heads(create_model("gpt_tiny"))
    labels = torch.tensor([1, 8])
    full = model.generate(labels, generator=torch.Generator().manual_seed(3))
    short = model.generate(labels, num_tokens=5, generator=torch.Generator().manual_seed(3))
    assert full.shape == (2, 32, 1) and short.shape == (2, 5, 1)
    assert torch.equal(short, full[:, :5])


def test_unconditional_gpt_and_label_dropout():
    model = _randomize_heads(create_model("gpt_tiny", num_classes=0))
    assert model.generate(num_samples=3, num_tokens=4).shape == (3, 4, 1)
    with pytest.raises(ValueError, match="unconditional"):
        model.generate(torch.tensor([0]))
    with pytest.raises(ValueError, match="CFG needs a class-conditional"):
        model.generate(num_samples=2, cfg_scale=2.0)
    cond = create_model("gpt_tiny", class_dropout=0.5)
    labels = torch.zeros(4000, dtype=torch.long)
    dropped = cond.condition(labels, 4000, drop=True)
    null = cond.class_embedding.weight[cond.null_class]
    frac = (dropped[:, 0] == null).all(-1).float().mean()
    assert 0.45 < frac < 0.55
    assert not (cond.condition(labels, 4000, drop=False)[:, 0] == null).all(-1).any()


def test_training_loss_starts_at_log_vocab_and_backpropagates():
    model = create_model("gpt_tiny").train()
    codes = torch.randint(0, 1024, (2, 4, 8, 1))  # 2D token grid [B, H, W, F] is flattened
    out = model(codes, torch.tensor([0, 1]))
    assert out.nll.shape == (2, 32)
    torch.testing.assert_close(out.loss, torch.log(torch.tensor(1024.0)))  # zero-initialised head
    out.loss.backward()
    assert model.head.output.weight.grad.abs().sum() > 0


def test_binary_128_bit_codes_work_end_to_end():
    layout = CodeLayout((2**8,) * 16, "lfq")  # 128 bits per token: no flat ids
    assert layout.flat_vocab is None
    for head in ("factor", "bit"):
        model = create_model("gpt_tiny", layout=layout, head=head, num_tokens=4)
        assert model.head_type == head and model.input_type == "factor_embedding"
        codes = torch.randint(0, 256, (2, 4, 16))
        loss = model(codes, torch.tensor([0, 1])).loss
        torch.testing.assert_close(loss, torch.tensor(128 * torch.log(torch.tensor(2.0)).item()))
        out = model.eval().generate(torch.tensor([0, 1]), cfg_scale=2.0)
        assert out.shape == (2, 4, 16)
        layout.validate(out)  # raises if any sampled digit is out of its radix
    assert create_model("gpt_tiny", layout=layout).head_type == "factor"  # auto


def test_clear_errors():
    model = create_model("gpt_tiny").eval()
    codes = torch.randint(0, 1024, (2, 32, 1))
    with pytest.raises(ValueError, match=r"class id out of range.*\[0, 10\)"):
        model(codes, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="class id out of range"):
        model.generate(torch.tensor([-1]))
    with pytest.raises(ValueError, match="labels .* required"):
        model(codes)
    with pytest.raises(ValueError, match="longer than the GPT context of 32"):
        model(torch.randint(0, 1024, (2, 33, 1)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 32\]"):
        model.generate(torch.tensor([0]), num_tokens=33)
    with pytest.raises(ValueError, match="out of range"):
        model(torch.full((2, 32, 1), 1024), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="F=1 factors"):
        model(torch.zeros(2, 32, 2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="flat head does not support code layout"):
        create_model("gpt_tiny", layout=CodeLayout((2**8,) * 16, "lfq"), head="flat")
    with pytest.raises(ValueError, match="bit head needs binary codes"):
        create_model("gpt_tiny", layout=CodeLayout((8, 5, 5, 5), "fsq"), head="bit")
    with pytest.raises(ValueError, match="unknown config key"):
        create_model("gpt_tiny", n_layer=3)
    with pytest.raises(ValueError, match="unknown sampling option"):
        model.generate(torch.tensor([0]), topk=3)
    with pytest.raises(ValueError, match="top_k / top_p do not apply"):
        create_model("gpt_tiny", layout=CodeLayout((4, 4), "lfq"), head="bit").generate(
            [0], top_k=2
        )


def test_save_load_round_trip(tmp_path):
    model = _randomize_heads(create_model("gpt_tiny", layout=CodeLayout((8, 5, 5, 5), "fsq")))
    model.save_pretrained(tmp_path / "gpt")
    loaded = visualtok.load(tmp_path / "gpt")
    assert isinstance(loaded, GPT) and loaded.code_layout == model.code_layout
    codes = torch.stack([torch.randint(0, r, (2, 32)) for r in (8, 5, 5, 5)], -1)
    labels = torch.tensor([0, 1])
    torch.testing.assert_close(loaded(codes, labels).nll, model(codes, labels).nll, atol=0, rtol=0)


def test_presets_and_sizes():
    assert {"gpt_tiny", "gpt_small", "gpt_b", "gpt_l"} <= set(
        visualtok.list_models(task="generator")
    )
    with torch.device("meta"):
        b = create_model("gpt_b")
    n = sum(p.numel() for p in b.parameters())
    assert 110e6 < n < 112e6  # LlamaGen-B: 111M
    assert b.head_type == "flat" and b.code_layout.flat_vocab == 16384


def test_features_input_uses_the_quantizer():
    from visualtok.quantize.config import QuantizerConfig, build_quantizer

    try:
        q = build_quantizer(QuantizerConfig(type="fsq", levels=(8, 5, 5, 5), dim=4))
    except ModuleNotFoundError:
        pytest.skip("FSQ quantizer not available")
    model = create_model("gpt_tiny", layout=q.layout, input="features", feature_dim=4, num_tokens=6)
    codes = torch.stack([torch.randint(0, r, (2, 6)) for r in (8, 5, 5, 5)], -1)
    with pytest.raises(ValueError, match="bind_quantizer"):
        model(codes, torch.tensor([0, 1]))
    model.bind_quantizer(q)
    _randomize_heads(model)  # a zero head passes no gradient to the trunk
    model(codes, torch.tensor([0, 1])).loss.backward()
    assert model.embed.proj.weight.grad.abs().sum() > 0
    g = [torch.Generator().manual_seed(0) for _ in range(2)]
    a = model.generate([1, 2], generator=g[0])
    assert torch.equal(a, model.generate([1, 2], generator=g[1], use_cache=False))


@pytest.mark.slow
def test_compiled_cached_sampling_matches_eager():
    model = _randomize_heads(create_model("gpt_tiny", num_tokens=8))
    labels = torch.tensor([1, 2])
    a = model.generate(labels, generator=torch.Generator().manual_seed(0))
    b = model.generate(labels, generator=torch.Generator().manual_seed(0), compile=True)
    assert torch.equal(a, b)
