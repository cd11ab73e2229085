"""LlamaGen VQGAN and ReTok encode/decode throughput: visualtok vs the official computation layout,
fp32 and bf16, on the full-size presets with random weights.

The reference runs the same weights through the official code's layout, rebuilt here:

* VQGAN (``FoundationVision/LlamaGen`` ``vq_model.py``): the spatial ``AttnBlock`` as separate
  ``q``/``k``/``v`` 1x1 convs, ``bmm`` + softmax + ``bmm`` and a ``proj_out`` conv; the quantizer as
  a dense ``[N, K]`` distance matrix + ``argmin`` on l2-normalised vectors;
* ReTok (``zfu006/ReTok``): sequence-first ``[L, B, D]`` Q-Former layers through
  ``nn.MultiheadAttention`` (DETR pre-norm), 1x1 convs on ``[B, C, 1, L]`` fake-2D tensors, the
  same dense VQ lookup.

ResnetBlocks, up/downsampling and GroupNorms are the same ops on both sides. Codes and pixels of
the reference are checked against ours before timing. The reference runs on PyTorch's stock
kernels (MKL sgemm for fp32 linears), as the official code does; visualtok's CPU fp32 inference
linears run through oneDNN (``visualtok.nn.linear``). bf16 is the model cast with
``.to(torch.bfloat16)``: bf16 weights and channels-last bf16 activations in the CNN, while the
quantizer and ``quant_conv`` stay fp32 (``ImageTokenizer.keep_fp32``); "bf16 same codes" is the
fraction of codes equal to fp32 on real photos (scikit-image).

Reference, fp32 and bf16 are timed in interleaved rounds (``time_interleaved``), so load that comes
and goes hits all three alike; the "(CPU s)" ratios divide process CPU seconds instead of wall
time: with ``--threads 1`` they count the work each side did, whatever share of a core the
scheduler gave it (the honest figure on a machine shared with other jobs).

    python benchmarks/bench_cnn.py                               # vqgan_16, retok_ss at 256x256
    python benchmarks/bench_cnn.py --presets vqgan_16 --batch 1 --repeats 3 --threads 1
    python benchmarks/bench_cnn.py --device cuda --batch 16 --json out.json
    python benchmarks/bench_cnn.py --bf16-variants --batch 2 --repeats 2 --threads 1

``--bf16-variants`` times encode only (the codes come from the encoder) for mixed-precision
layouts that keep parts of the encoder in fp32, against fp32 and the default bf16 cast, and gives
each one's fraction of codes equal to fp32 (benchmarks/RESULTS.md, issue #12).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import machine_info, print_table, time_interleaved, write_json  # noqa: E402
from benchmarks.bench_titok import gflop, real_photos, stock_path  # noqa: E402
from visualtok import create_model, load  # noqa: E402
from visualtok.image.retok import ReTok, multi_level_queries  # noqa: E402
from visualtok.image.vqgan import VQGAN  # noqa: E402
from visualtok.nn.attention import Attention  # noqa: E402
from visualtok.nn.conv import AttnBlock, fast_layout  # noqa: E402


# ---------------------------------------------------------------------- official-layout reference
def _ref_attn(blk: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """LlamaGen ``AttnBlock.forward``: q/k/v 1x1 convs, bmm, softmax, bmm, proj_out conv."""
    b, c, h, w = x.shape
    hn = blk.norm(x)
    wq, wk, wv = blk.attn.qkv.weight.view(3, c, c, 1, 1)
    bq, bk, bv = blk.attn.qkv.bias.view(3, c)
    q = F.conv2d(hn, wq, bq).reshape(b, c, h * w).permute(0, 2, 1)
    k = F.conv2d(hn, wk, bk).reshape(b, c, h * w)
    v = F.conv2d(hn, wv, bv).reshape(b, c, h * w)
    att = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
    out = torch.bmm(v, att.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + F.conv2d(out, blk.attn.proj.weight.view(c, c, 1, 1), blk.attn.proj.bias)


def _ref_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _ref_attn(blk, x) if isinstance(blk, AttnBlock) else blk(x)


def _ref_levels(levels, x: torch.Tensor, adaptive=None, cond=None) -> torch.Tensor:
    for i, level in enumerate(levels):
        if adaptive is not None:
            x = adaptive[i](x, cond)
        for j, res in enumerate(level.res):
            x = res(x)
            if len(level.attn):
                x = _ref_attn(level.attn[j], x)
        for name in ("downsample", "upsample"):
            if hasattr(level, name):
                x = getattr(level, name)(x)
    return x


def _ref_encoder(enc, x: torch.Tensor) -> torch.Tensor:
    x = _ref_levels(enc.conv_blocks, enc.conv_in(x))
    for blk in enc.mid:
        x = _ref_block(blk, x)
    return enc.conv_out(F.silu(enc.norm_out(x)))


def _ref_decoder(dec, z: torch.Tensor) -> torch.Tensor:
    x = dec.conv_in(z)
    for blk in dec.mid:
        x = _ref_block(blk, x)
    x = _ref_levels(dec.conv_blocks, x, dec.adaptive, z)
    return dec.conv_out(F.silu(dec.norm_out(x)))


def _ref_vq(quantizer, z: torch.Tensor) -> torch.Tensor:
    """Official lookup: ``[B, C, *S]`` -> flat codes by a dense distance matrix + argmin."""
    zf = F.normalize(z.movedim(1, -1).reshape(-1, z.shape[1]).float(), dim=-1)
    emb = F.normalize(quantizer.embedding.weight, dim=-1)
    d = zf.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * zf @ emb.t()
    return d.argmin(1)


def _ref_codebook(quantizer, codes: torch.Tensor) -> torch.Tensor:
    return F.normalize(quantizer.embedding.weight, dim=-1)[codes]


class ReferenceVQGAN(nn.Module):
    def __init__(self, model: VQGAN) -> None:
        super().__init__()
        self.m = model

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        m = self.m
        h = m.quant_conv(_ref_encoder(m.encoder, images * 2 - 1))
        return _ref_vq(m.quantizer, h).view(h.shape[0], h.shape[2], h.shape[3], 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        q = _ref_codebook(self.m.quantizer, codes[..., 0]).permute(0, 3, 1, 2).contiguous()
        x = _ref_decoder(self.m.decoder, self.m.post_quant_conv(q))
        return ((x + 1) / 2).clamp(0, 1)


class _RefQFormerLayer(nn.Module):
    """DETR pre-norm decoder layer, sequence-first, through ``nn.MultiheadAttention``."""

    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer
        self.attn = nn.ModuleList()
        for a in (layer.self_attn, layer.cross_attn):
            mha = nn.MultiheadAttention(a.qkv.in_features, a.num_heads)
            mha.in_proj_weight, mha.in_proj_bias = a.qkv.weight, a.qkv.bias
            mha.out_proj.weight, mha.out_proj.bias = a.proj.weight, a.proj.bias
            self.attn.append(mha)

    def forward(self, tgt, memory, pos, query_pos):
        lay = self.layer
        t2 = lay.norm1(tgt)
        q = t2 + query_pos
        tgt = tgt + self.attn[0](q, q, t2, need_weights=False)[0]
        t2 = lay.norm2(tgt)
        tgt = tgt + self.attn[1](t2 + query_pos, memory + pos, memory, need_weights=False)[0]
        return tgt + lay.linear2(F.gelu(lay.linear1(lay.norm3(tgt))))


class ReferenceReTok(nn.Module):
    def __init__(self, model: ReTok) -> None:
        super().__init__()
        self.m = model
        self.enc = nn.ModuleList(_RefQFormerLayer(x) for x in model.s2to1encoder.transformer)
        self.dec = nn.ModuleList(_RefQFormerLayer(x) for x in model.s1to2decoder.transformer)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        m, e = self.m, self.m.s2to1encoder
        s = _ref_encoder(m.encoder, images * 2 - 1)
        B, _, g, _ = s.shape
        x = e.encoder_embed(e.ln_pre(s.reshape(B, s.shape[1], -1).permute(2, 0, 1)))  # [L, B, W]
        lat = multi_level_queries(x.permute(1, 2, 0).reshape(B, -1, g, g), e.num_latent_tokens)
        lat = lat.permute(1, 0, 2)
        lat = e.global_proj(torch.cat([lat, lat[e.redundant_from:]], dim=0))
        qpos = torch.cat([e.latent_token_positional_embedding,
                          e.latent_token_positional_embedding_comp])[:, None]
        for layer in self.enc:
            lat = layer(lat, x, e.positional_embedding[:, None], qpos)
        lat = e.ln_post(lat).permute(1, 2, 0).reshape(B, -1, 1, lat.shape[0])
        h = m.quant_conv(e.conv_out(lat))  # [B, D, 1, N + M]
        return _ref_vq(m.quantizer, h).view(B, -1, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        m, d = self.m, self.m.s1to2decoder
        B, k = codes.shape[:2]
        q = _ref_codebook(m.quantizer, codes[..., 0]).permute(0, 2, 1)[:, :, None]  # [B, D, 1, k]
        q = m.post_quant_conv(q)
        x = d.decoder_embed(d.ln_pre(q.reshape(B, q.shape[1], k).permute(2, 0, 1)))  # [k, B, W]
        lat = x[:1].repeat(d.grid_size**2, 1, 1)
        pos = torch.cat([d.latent_token_positional_embedding,
                         d.latent_token_positional_embedding_comp])[:k, None]
        for layer in self.dec:
            lat = layer(lat, x, pos, d.positional_embedding[:, None])
        g = d.grid_size
        rec = d.conv_out(d.ln_post(lat).permute(1, 2, 0).reshape(B, d.width, g, g).contiguous())
        return ((_ref_decoder(m.decoder, rec) + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------- measurements
def bench_preset(name: str, args) -> list[dict]:
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = create_model(name).eval().to(dev)
    ref = (ReferenceVQGAN if isinstance(model, VQGAN) else ReferenceReTok)(model).eval()
    x = real_photos(args.batch, args.size).to(dev)
    codes = model.encode(x)
    with stock_path():
        ref_codes = ref.encode(x)
        ref_pixels = ref.decode(codes)
    code_match = float((ref_codes == codes).float().mean())
    max_diff = float((ref_pixels - model.decode(codes)).abs().max())
    enc_gf = gflop(lambda: model.encode(x[:1]))
    dec_gf = gflop(lambda: model.decode(codes[:1]))

    # the bf16 path: a bf16 copy of the weights (channels-last trunk, fp32 quantizer + quant_conv)
    low = copy.deepcopy(model).to(torch.bfloat16)
    codes_bf16 = low.encode(x)

    def stock(fn, inp):
        def call():
            with stock_path():
                return fn(inp)
        return call

    B, rows = args.batch, []
    for stage, gf, fns in (
        ("encode", enc_gf, {"ref": stock(ref.encode, x), "fp32": lambda: model.encode(x),
                            "bf16": lambda: low.encode(x)}),
        ("decode", dec_gf, {"ref": stock(ref.decode, codes), "fp32": lambda: model.decode(codes),
                            "bf16": lambda: low.decode(codes)}),
    ):
        cpu: dict[str, float] = {}  # rounds ref, fp32, bf16, ref, ...: load hits all three alike
        t = time_interleaved(fns, dev, warmup=1, repeats=args.repeats, cpu=cpu)
        rows.append({"preset": name, "stage": stage, "GFLOP/img": gf, "ref img/s": B / t["ref"],
                     "fp32 img/s": B / t["fp32"], "fp32/ref": t["ref"] / t["fp32"],
                     "bf16 img/s": B / t["bf16"], "bf16/fp32": t["fp32"] / t["bf16"],
                     "fp32/ref (CPU s)": cpu["ref"] / cpu["fp32"],
                     "bf16/fp32 (CPU s)": cpu["fp32"] / cpu["bf16"]})
    rows[0]["bf16 same codes"] = float((codes_bf16 == codes).float().mean())
    rows[0]["ref same codes"] = code_match
    rows[1]["ref max |diff|"] = max_diff
    return rows


# ---------------------------------------------------------------------- bf16 layouts (encode)
def _compute_in(mod: nn.Module, dtype: torch.dtype, out: torch.dtype | None = None,
                attr: str = "forward") -> None:
    """Make ``mod`` compute in ``dtype``: parameters cast, input cast (low precision:
    channels-last), output cast to ``out`` (None: left as computed)."""
    mod.to(dtype)
    call = getattr(mod, attr)

    def run(x, *a, **k):
        x = x.to(dtype)
        y = call(fast_layout(x) if dtype != torch.float32 else x, *a, **k)
        if out is None:
            return y
        y = y.to(out)
        return fast_layout(y) if out != torch.float32 else y

    setattr(mod, attr, run)


def bf16_layouts(model: nn.Module) -> dict[str, nn.Module]:
    """Mixed-precision variants of ``model``'s encoder that try to recover fp32's codes."""
    bf, f32 = torch.bfloat16, torch.float32
    enc = model.encoder
    head = [f"encoder.mid.{i}" for i in range(len(enc.mid))] + ["encoder.norm_out",
                                                                  "encoder.conv_out"]
    last = f"encoder.conv_blocks.{len(enc.conv_blocks) - 1}"
    qformer = isinstance(model, ReTok)

    def islands(names: list[str]) -> nn.Module:  # the bf16 cast, ``names`` back in fp32
        m = copy.deepcopy(model).to(bf)
        for n in names:
            _compute_in(m.get_submodule(n), f32, bf, "blocks" if "conv_blocks" in n else "forward")
        return m

    def convs_only(qformer_fp32: bool = False) -> nn.Module:  # fp32 stream, bf16 convs
        m = copy.deepcopy(model)
        for mod in list(m.encoder.modules()):
            if isinstance(mod, (nn.Conv2d, Attention)):
                _compute_in(mod, bf, f32)
        if qformer and not qformer_fp32:
            _compute_in(m.s2to1encoder, bf)
        return m

    def groupnorm_fp32() -> nn.Module:
        m = copy.deepcopy(model).to(bf)
        for mod in list(m.encoder.modules()):
            if isinstance(mod, nn.GroupNorm):
                _compute_in(mod, f32, bf)
        return m

    out = {
        "bf16 (default: .to(torch.bfloat16))": copy.deepcopy(model).to(bf),
        "bf16, GroupNorm in fp32": groupnorm_fp32(),
        "bf16, conv_in fp32": islands(["encoder.conv_in"]),
        "bf16, mid + norm_out + conv_out fp32": islands(head),
        "bf16, conv_in + mid + norm_out + conv_out fp32": islands(["encoder.conv_in", *head]),
        "bf16, conv_in + last level + mid + out fp32": islands(["encoder.conv_in", last, *head]),
        "convs (+attention) bf16, fp32 residual stream / GroupNorm / SiLU": convs_only(),
    }
    if qformer:
        out["bf16 CNN, Q-Former 2D->1D fp32"] = islands(["s2to1encoder"])
        out["convs bf16, fp32 stream, Q-Former fp32"] = convs_only(qformer_fp32=True)
    return out


def bench_bf16_layouts(name: str, args) -> list[dict]:
    """``name``: a preset (random weights) or a saved model directory (e.g. a trained tiny one;
    with ``--random-init``, its architecture with fresh random weights)."""
    torch.manual_seed(0)
    if Path(name).is_dir():
        model = load(name)
        if args.random_init:
            torch.manual_seed(0)
            model = type(model)(model.config)
    else:
        model = create_model(name)
    model.eval()
    x = real_photos(args.batch, args.size)
    codes = model.encode(x)
    variants = bf16_layouts(model)
    fns = {"fp32": lambda: model.encode(x)}
    fns.update({k: functools.partial(m.encode, x) for k, m in variants.items()})
    cpu: dict[str, float] = {}
    time_interleaved(fns, args.device, warmup=1, repeats=args.repeats, cpu=cpu)
    rows = [{"preset": name, "configuration": "fp32", "encode CPU s/img": cpu["fp32"] / args.batch,
             "bf16/fp32 (CPU s)": 1.0, "same codes": 1.0}]
    for k, m in variants.items():
        rows.append({"preset": name, "configuration": k,
                     "encode CPU s/img": cpu[k] / args.batch,
                     "bf16/fp32 (CPU s)": cpu["fp32"] / cpu[k],
                     "same codes": float((m.encode(x) == codes).float().mean())})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", default="vqgan_16,retok_ss")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="image side (ReTok is fixed at 256)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1: the CPU-second ratios count work, not spin-waiting)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--random-init", action="store_true",
                    help="with --bf16-variants and a model directory: its config, random weights")
    ap.add_argument("--bf16-variants", action="store_true",
                    help="encode only: mixed-precision layouts vs fp32 (CPU s, same codes)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args.device)
    info["load_average_start"] = os.getloadavg()
    print(f"machine: {info}")
    rows = []
    bench = bench_bf16_layouts if args.bf16_variants else bench_preset
    with torch.no_grad():  # scoped: a caller's grad mode is left as it was
        for name in args.presets.split(","):
            rows += bench(name.strip(), args)
    info["load_average_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): start {info['load_average_start']}, "
          f"end {info['load_average_end']}")
    if args.bf16_variants:
        print_table(rows, ["preset", "configuration", "encode CPU s/img", "bf16/fp32 (CPU s)",
                           "same codes"], title=f"bf16 layouts, encode, batch {args.batch}")
        write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})
        return rows
    cols = ["preset", "stage", "GFLOP/img", "ref img/s", "fp32 img/s", "fp32/ref", "bf16 img/s",
            "bf16/fp32", "fp32/ref (CPU s)", "bf16/fp32 (CPU s)", "bf16 same codes",
            "ref same codes", "ref max |diff|"]
    print_table(rows, cols, title=f"CNN tokenizers, batch {args.batch}, {args.device}, "
                                  f"random weights, {args.size}x{args.size}")
    write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
