"""TiTok encode/decode throughput: visualtok vs an official-layout reference, fp32 and bf16.

For each preset (random weights, 256x256, batch 8) this measures images/s of ``encode`` (images ->
codes) and ``decode`` (codes -> images), GFLOP per image (``FlopCounterMode``), achieved GFLOP/s as
a fraction of the fp32 matmul peak measured in the same run, and the bf16 autocast path with the
fraction of codes identical to fp32 on real photos (scikit-image, resized to 256).

The reference runs the same weights through the official code's computation layout, rebuilt here:
sequence-first ``[L, B, D]`` tensors through ``nn.MultiheadAttention`` blocks, NCHW 1x1 convs for
the projections and heads, an einsum over the softmaxed proxy codes and the MaskGIT decoder with
"same"-padding convs in contiguous NCHW. Its outputs are checked against ours before timing. The
reference runs on PyTorch's stock kernels (MKL sgemm for fp32 linears), as the official code does;
visualtok's CPU fp32 inference linears run through oneDNN (``visualtok.nn.linear``). Both GEMM
peaks are measured and printed; MFU is against the better one.

    python benchmarks/bench_titok.py                       # S-128, B-64, L-32 on CPU
    python benchmarks/bench_titok.py --presets titok_s128 --batch 4 --repeats 2
    python benchmarks/bench_titok.py --device cuda --compile --json out.json

With ``--official PATH`` (a checkout of bytedance/1d-tokenizer, see README.md) the reference is the
unmodified official model instead: built with random init, its weights converted into ours with
``visualtok.convert.titok``, parity checked on 8 Kodak photos (codes equal, decode close), then
visualtok fp32, official fp32 and visualtok bf16 timed interleaved (A, B, C, A, B, C), one process:

    python benchmarks/bench_titok.py --official /tmp/official/1d-tokenizer --presets titok_s128
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import (  # noqa: E402
    machine_info,
    matmul_peaks,
    print_table,
    time_call,
    time_interleaved,
    write_json,
)
from benchmarks.official import build_official_titok, kodak_photos, load_average  # noqa: E402
from visualtok import create_model  # noqa: E402
from visualtok.image.titok import TiTok  # noqa: E402
from visualtok.nn.linear import cpu_linear_backend_as  # noqa: E402


# ---------------------------------------------------------------------- official-layout reference
class _RefBlock(nn.Module):
    """OpenCLIP block in the official layout: ``[L, B, D]`` through ``nn.MultiheadAttention``."""

    def __init__(self, block) -> None:
        super().__init__()
        d = block.ln_1.normalized_shape[0]
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.attn = nn.MultiheadAttention(d, block.attn.num_heads)
        qkv, proj = block.attn.qkv, block.attn.proj
        self.attn.in_proj_weight, self.attn.in_proj_bias = qkv.weight, qkv.bias
        self.attn.out_proj.weight, self.attn.out_proj.bias = proj.weight, proj.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def _same_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    k = conv.kernel_size[0]
    if k > 1:
        p = k - 1
        x = F.pad(x, [p // 2, p - p // 2, p // 2, p - p // 2])
    return F.conv2d(x, conv.weight, conv.bias)


def _ref_resblock(blk, x: torch.Tensor) -> torch.Tensor:
    h = _same_conv(blk.conv1, F.silu(blk.norm1(x)))
    h = _same_conv(blk.conv2, F.silu(blk.norm2(h)))
    return h + (_same_conv(blk.nin_shortcut, h) if blk.changes_width else x)


def _ref_pixel_decoder(dec, z: torch.Tensor) -> torch.Tensor:
    x = _same_conv(dec.conv_in, z)
    for blk in dec.mid:
        x = _ref_resblock(blk, x)
    for up in reversed(dec.up):
        for blk in up.block:
            x = _ref_resblock(blk, x)
        if up.upsample:
            x = _same_conv(up.upsample_conv, F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return _same_conv(dec.conv_out, F.silu(dec.norm_out(x)))


class ReferenceTiTok(nn.Module):
    """The official computation layout over a visualtok ``TiTok``'s weights (VQ presets)."""

    def __init__(self, model: TiTok) -> None:
        super().__init__()
        self.m = model
        self.enc_blocks = nn.ModuleList(_RefBlock(b) for b in model.encoder.transformer)
        self.dec_blocks = nn.ModuleList(_RefBlock(b) for b in model.decoder.transformer)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        e, cfg = self.m.encoder, self.m.config
        B = images.shape[0]
        x = e.patch_embed(images)
        x = x.reshape(B, x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([e.class_embedding.unsqueeze(0).expand(B, -1, -1), x], dim=1)
        x = x + e.positional_embedding
        lat = self.m.latent_tokens.unsqueeze(0).expand(B, -1, -1)
        lat = lat + e.latent_token_positional_embedding
        x = e.ln_pre(torch.cat([x, lat], dim=1)).permute(1, 0, 2)
        for blk in self.enc_blocks:
            x = blk(x)
        x = e.ln_post(x.permute(1, 0, 2)[:, 1 + e.grid_size**2:])
        n, w = cfg.num_latent_tokens, e.width
        if cfg.is_legacy:
            x = x.reshape(B, w, n, 1)
        else:
            x = x.reshape(B, n, w, 1).permute(0, 2, 1, 3)
        z = e.conv_out(x).reshape(B, -1, 1, n)
        # official VQ: nearest (l2-normalised) codebook row by full distance matrix
        q = self.m.quantizer
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        emb = q.embedding.weight
        if q.config.l2_normalize:
            zf, emb = F.normalize(zf, dim=-1), F.normalize(emb, dim=-1)
        d = zf.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * zf @ emb.t()
        return d.argmin(1).view(B, n, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        m, dec = self.m, self.m.decoder
        B, n = codes.shape[:2]
        z = m.quantizer.decode(codes)  # [B, N, D]
        x = dec.decoder_embed(z)
        masks = dec.mask_token.repeat(B, dec.grid_size**2, 1)
        masks = torch.cat([dec.class_embedding.unsqueeze(0).expand(B, -1, -1), masks], dim=1)
        masks = masks + dec.positional_embedding
        x = x + dec.latent_token_positional_embedding[:n]
        x = dec.ln_pre(torch.cat([masks, x], dim=1)).permute(1, 0, 2)
        for blk in self.dec_blocks:
            x = blk(x)
        x = dec.ln_post(x.permute(1, 0, 2)[:, 1:1 + dec.grid_size**2])
        g = dec.grid_size
        x = dec.ffn(x.permute(0, 2, 1).reshape(B, dec.width, g, g).contiguous())
        if m.config.pixel_decoder:
            soft = torch.einsum("nchw,cd->ndhw", x.softmax(1), m.pixel_quantize.embedding.weight)
            x = _ref_pixel_decoder(m.pixel_decoder, soft)
        else:
            p = dec.patch_size
            x = x.view(B, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(B, 3, g * p, g * p)
            x = dec.conv_out(x)
        return x.clamp(0, 1)


# ---------------------------------------------------------------------- measurements
def real_photos(n: int, size: int = 256) -> torch.Tensor:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "retina",
             "hubble_deep_field"]
    imgs = []
    for i in range(n):
        a = getattr(data, names[i % len(names)])()
        t = torch.from_numpy(a.copy()).permute(2, 0, 1).float()[None] / 255.0
        s = min(t.shape[-2:])
        top, left = (t.shape[-2] - s) // 2, (t.shape[-1] - s) // 2
        t = t[..., top:top + s, left:left + s]
        imgs.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(imgs).clamp(0, 1)


def gflop(fn) -> float:
    # FlopCounterMode counts aten GEMMs/convs, so count on the stock path (same FLOPs).
    with cpu_linear_backend_as("aten"), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def stock_path():
    """The official code runs on PyTorch's stock kernels: time the reference that way."""
    return cpu_linear_backend_as("aten")


def _fmt_peaks(peaks: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())


def bench_preset(name: str, args, peak: float, peak16: float) -> list[dict]:
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = create_model(name).eval().to(dev)
    ref = ReferenceTiTok(model).eval()
    x = real_photos(args.batch).to(dev)
    codes = model.encode(x)
    # correctness cross-check before timing
    with stock_path():
        ref_codes = ref.encode(x)
        ref_pixels = ref.decode(codes)
    code_match = float((ref_codes == codes).float().mean())
    max_diff = float((ref_pixels - model.decode(codes)).abs().max())
    enc_gf = gflop(lambda: model.encode(x[:1]))
    dec_gf = gflop(lambda: model.decode(codes[:1]))

    enc_fn, dec_fn = model.encode, model.decode
    if args.compile:
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
        if model.config.pixel_decoder:
            model.pixel_decoder = torch.compile(model.pixel_decoder)

    def timed(fn, inp, bf16: bool, stock: bool = False) -> float:
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        def call():
            with ctx, (stock_path() if stock else contextlib.nullcontext()):
                return fn(inp)
        return time_call(call, dev, warmup=1, repeats=args.repeats)

    rows = []
    t_ref_enc = timed(ref.encode, x, False, stock=True) if args.reference else float("nan")
    t_ref_dec = timed(ref.decode, codes, False, stock=True) if args.reference else float("nan")
    t_enc = timed(enc_fn, x, False)
    t_dec = timed(dec_fn, codes, False)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        codes_bf16 = model.encode(x)
    t_enc16 = timed(enc_fn, x, True)
    t_dec16 = timed(dec_fn, codes, True)
    B = args.batch
    for stage, gf, t_ref, t32, t16 in (("encode", enc_gf, t_ref_enc, t_enc, t_enc16),
                                       ("decode", dec_gf, t_ref_dec, t_dec, t_dec16)):
        rows.append({
            "preset": name, "stage": stage, "GFLOP/img": gf,
            "ref img/s": B / t_ref, "fp32 img/s": B / t32, "bf16 img/s": B / t16,
            "fp32/ref": t_ref / t32, "bf16/fp32": t32 / t16,
            "fp32 MFU": gf * B / t32 / peak, "bf16 MFU": gf * B / t16 / peak16,
        })
    rows[0]["bf16 same codes"] = float((codes_bf16 == codes).float().mean())
    rows[0]["ref same codes"] = code_match
    rows[1]["ref max |diff|"] = max_diff
    return rows


def bench_official(name: str, args) -> list[dict]:
    """Same-run comparison with the official code on identical (converted) weights."""
    if args.device != "cpu":
        raise ValueError("--official runs on CPU only")
    pair = build_official_titok(args.official, name)
    model = pair.ours
    B, P = args.batch, args.parity_images
    photos = kodak_photos(max(B, P))
    codes_p = model.encode(photos[:P])
    same = float((pair.encode(photos[:P]) == codes_p).float().mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same16 = float((model.encode(photos[:P]) == codes_p).float().mean())
    if same < 1.0:
        raise SystemExit(f"parity failed for {name}: codes equal to the official on {same:.4f} "
                         "of tokens; not timing different models")

    def bf16(fn):
        def call(inp):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(inp)
        return call

    x = photos[:B]
    codes = codes_p[:B] if B <= P else model.encode(x)
    enc16, dec16 = bf16(model.encode), bf16(model.decode)
    stages = [("encode", x, model.encode, pair.encode, enc16, 1)]
    if "decode" in args.stages:
        # the decode warm-up calls double as the decode parity check (seconds per image)
        max_diff = float((pair.decode(codes) - model.decode(codes)).abs().max())
        dec16(codes)
        if max_diff > args.parity_atol:
            raise SystemExit(f"parity failed for {name}: decode max |diff| {max_diff:.2e} > "
                             f"{args.parity_atol:g}; not timing different models")
        stages.append(("decode", codes, model.decode, pair.decode, dec16, 0))
    if "encode" not in args.stages:
        stages = stages[1:]
    rows = []
    for stage, inp, ours, off, ours16, warm in stages:
        load0, cpu = load_average(), {}
        t = time_interleaved(
            {"fp32": lambda f=ours, i=inp: f(i), "official": lambda f=off, i=inp: f(i),
             "bf16": lambda f=ours16, i=inp: f(i)},
            warmup=warm, repeats=args.repeats, cpu=cpu,
        )
        rows.append({
            "preset": name, "stage": stage, "official fp32 img/s": B / t["official"],
            "visualtok fp32 img/s": B / t["fp32"], "fp32 / official": t["official"] / t["fp32"],
            "visualtok bf16 img/s": B / t["bf16"],
            "bf16 / official fp32": t["official"] / t["bf16"],
            "CPU time fp32 / official": cpu["official"] / cpu["fp32"],
            "CPU time bf16 / official": cpu["official"] / cpu["bf16"],
            "load avg (1m) before/after": f"{load0[0]:.1f}/{load_average()[0]:.1f}",
        })
    if args.profile:  # where the encode time goes, per side (self CPU time per op)
        from torch.profiler import ProfilerActivity, profile

        for label, fn in (("visualtok bf16", enc16), ("visualtok fp32", model.encode),
                          ("official fp32", pair.encode)):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(x)
            print(f"\n## profile: {name} encode, {label}, batch {B}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8),
                  flush=True)
    rows[0]["codes = official"] = same
    rows[0]["bf16 codes = fp32"] = same16
    if "decode" in args.stages:
        rows[-1]["decode max |diff|"] = max_diff
    return rows


def main_official(args) -> None:
    torch.set_grad_enabled(False)
    info = machine_info(args.device)
    info["load_average_start"] = load_average()
    print(f"machine: {info}")
    rows = []
    for name in args.presets.split(","):
        rows += bench_official(name.strip(), args)
    info["load_average_end"] = load_average()
    cols = ["preset", "stage", "official fp32 img/s", "visualtok fp32 img/s", "fp32 / official",
            "visualtok bf16 img/s", "bf16 / official fp32", "codes = official",
            "bf16 codes = fp32", "decode max |diff|", "CPU time fp32 / official",
            "CPU time bf16 / official", "load avg (1m) before/after"]
    title = (f"TiTok vs official 1d-tokenizer, same run, interleaved x{args.repeats}, batch "
             f"{args.batch} Kodak photos 256x256 (codes checked on {args.parity_images}), "
             f"{torch.get_num_threads()} threads, load average "
             f"{info['load_average_start']} -> {info['load_average_end']}")
    print_table(rows, cols, title=title)
    write_json(args.json, {"machine": info, "args": vars(args), "rows": rows})


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", default="titok_s128,titok_b64,titok_l32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile encoder/decoder (GPU)")
    ap.add_argument("--no-reference", dest="reference", action="store_false")
    ap.add_argument("--json", default=None)
    ap.add_argument("--official", default=None, metavar="PATH",
                    help="checkout of bytedance/1d-tokenizer: time the official code itself")
    ap.add_argument("--parity-images", type=int, default=8,
                    help="--official: Kodak photos whose codes must equal the official ones")
    ap.add_argument("--parity-atol", type=float, default=1e-4,
                    help="--official: largest decode |diff| accepted before timing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--profile", action="store_true",
                    help="--official: torch.profiler table of one encode per side")
    ap.add_argument("--stages", nargs="+", choices=["encode", "decode"],
                    default=["encode", "decode"], help="--official: stages to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official:
        if args.presets == ap.get_default("presets"):
            args.presets = "titok_s128"
        return main_official(args)
    torch.set_grad_enabled(False)
    peaks = matmul_peaks(args.device, torch.float32)
    peaks16 = matmul_peaks(args.device, torch.bfloat16)
    peak, peak16 = max(peaks.values()), max(peaks16.values())
    info = machine_info(args.device)
    info["load_average_start"] = load_average()
    print(f"machine: {info}")
    print("matmul peak GFLOP/s (MFU is against the best of each dtype): "
          f"fp32 {_fmt_peaks(peaks)}; bf16 {_fmt_peaks(peaks16)}")
    rows = []
    for name in args.presets.split(","):
        rows += bench_preset(name.strip(), args, peak, peak16)
    cols = ["preset", "stage", "GFLOP/img", "ref img/s", "fp32 img/s", "fp32/ref", "fp32 MFU",
            "bf16 img/s", "bf16/fp32", "bf16 MFU", "bf16 same codes", "ref same codes",
            "ref max |diff|"]
    info["load_average_end"] = load_average()
    title = (f"TiTok, batch {args.batch}, {args.device}, random weights, 256x256, load average "
             f"{info['load_average_start']} -> {info['load_average_end']}")
    print_table(rows, cols, title=title)
    write_json(args.json, {"machine": info, "args": vars(args), "matmul_peak_gflops": peak,
                           "matmul_peak_bf16_gflops": peak16, "matmul_peaks_fp32": peaks,
                           "matmul_peaks_bf16": peaks16, "rows": rows})


if __name__ == "__main__":
    main()
