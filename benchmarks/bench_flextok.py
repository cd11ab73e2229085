"""FlexTok speed: visualtok beside the official computation rebuilt in the same run.

With random weights, for ``flextok_d12_d12`` at 256x256 (32x32x16 latents, 256 registers), it
measures

* **encode**: images/s of latents -> tokens (patch embedding, 12-layer causal-last trunk, head,
  FSQ), and once the diffusers VAE encoder both implementations share;
* **decode**: seconds per Euler step (conditional + null-condition pass, APG) at k = 1, 16, 256
  kept tokens;
* **peak memory** of one encode and one decode step (profiler allocation records on CPU);
* the **bf16** paths of ours against our fp32: CPU/CUDA autocast (weights cast to bf16 per
  call) and a bf16 copy of the model (weights stored in bf16, bf16 inputs; the FSQ still rounds
  in fp32), whose linears run oneDNN's bf16 GEMM on CPUs with avx512_bf16 / AMX;
* with ``--profile``: where one decode step's time goes (GEMMs, attention, everything else; top
  operators) in fp32 and in bf16, from ``torch.profiler``.

The reference rebuilds the official computation layout (apple/ml-flextok @ 87d00cc), in our own
code, on the same weights: every sample is packed into one ``[1, L, D]`` sequence padded to a
multiple of 128 with a materialised block-diagonal boolean mask (the official SDPA fallback of its
FlexAttention), separate ``wq``/``wk``/``wv`` linears on PyTorch's stock kernels, per-sub-sequence
adaLN embeddings expanded over the packed sequence, and two decoder passes per step (conditional,
then null condition) as its pipeline runs them. Outputs are checked against ours before timing.

    python benchmarks/bench_flextok.py                      # CPU, batch 2 encode / 1 decode
    python benchmarks/bench_flextok.py --profile --repeats 1 --batch 1 --ks 16
    python benchmarks/bench_flextok.py --device cuda --batch 8 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import (  # noqa: E402
    machine_info,
    peak_memory_bytes,
    print_table,
    time_call,
    time_interleaved,
    write_json,
)
from visualtok import create_model  # noqa: E402
from visualtok.image.flextok import apg_update, patchify, unpatchify  # noqa: E402
from visualtok.nn.linear import cpu_linear_backend_as  # noqa: E402


# ---------------------------------------------------------------------- official layout, rebuilt
def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:]).type_as(x)


def _ref_block(blk, x, mask, mod=None):
    """One official-layout block on a packed ``[1, L, D]`` sequence (separate q/k/v linears)."""
    a = blk.attn
    d = x.shape[-1]
    wq, wk, wv = a.qkv.weight.split(d, dim=0)
    h = a.num_heads

    def attn(y):
        q, k, v = (F.linear(y, w).unflatten(-1, (h, -1)).transpose(1, 2) for w in (wq, wk, wv))
        q, k = _ln(q), _ln(k)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=a.scale)
        return F.linear(o.transpose(1, 2).flatten(2), a.proj.weight)

    def mlp(y):
        m = blk.mlp
        return F.linear(F.silu(F.linear(y, m.w1.weight)) * F.linear(y, m.w3.weight), m.w2.weight)

    if mod is None:
        x = x + attn(_ln(x))
        return x + mlp(_ln(x))
    g1, g2, s1, c1, s2, c2 = mod.chunk(6, dim=-1)
    x = x + g1 * attn(_ln(x) * (1 + c1) + s1)
    return x + g2 * mlp(_ln(x) * (1 + c2) + s2)


def _pack_mask(lengths: list[int], prefixes: list[int] | None, total: int, device) -> torch.Tensor:
    """Materialised block-diagonal mask (optionally causal-last with the given prefix lengths)."""
    ids = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])
    ids = F.pad(ids, (0, total - ids.numel()), value=-1)
    offsets = torch.tensor([0] + lengths[:-1], device=device).cumsum(0)
    q, k = torch.arange(total, device=device)[:, None], torch.arange(total, device=device)[None]
    same = (ids[:, None] == ids[None, :]) & ((ids[:, None] != -1) | (ids[None, :] != -1))
    if prefixes is None:
        return same[None, None]
    safe = ids.clamp(min=0)
    ql, kl = q - offsets[safe][:, None], k - offsets[safe][None, :]
    pref = torch.tensor(prefixes, device=device)[safe][None, :]
    return (same & ((ql >= kl) | (kl < pref)))[None, None]


@torch.no_grad()
def ref_encode(model, latents: torch.Tensor) -> torch.Tensor:
    enc = model.encoder
    regs_list, lengths, prefixes = [], [], []
    for z in latents.split(1):
        x = enc.patch_embed(patchify(z, enc.patch_size))
        h, w = x.shape[1:3]
        x = (x + enc.pos_embed[0, :, :h, :w].permute(1, 2, 0)).flatten(1, 2)
        regs_list.append(torch.cat([x, enc.registers[None]], dim=1))
        lengths.append(regs_list[-1].shape[1])
        prefixes.append(h * w)
    seq = torch.cat(regs_list, dim=1)
    total = -(-seq.shape[1] // 128) * 128
    seq = F.pad(seq, (0, 0, 0, total - seq.shape[1]))
    mask = _pack_mask(lengths, prefixes, total, seq.device)
    for blk in enc.blocks:
        seq = _ref_block(blk, seq, mask)
    out, start = [], 0
    for n, p in zip(lengths, prefixes):
        out.append(seq[:, start + p : start + n])
        start += n
    regs = torch.cat(out)
    return model.quantizer.encode(F.linear(_ln(regs), enc.head.weight, enc.head.bias))


def _ref_velocity(model, x, t, quants, keep, uncond: bool):
    dec = model.decoder
    temb = dec.embed_time(t)
    seqs, sub = [], []
    for i in range(x.shape[0]):
        p = dec.patch_embed(patchify(x[i : i + 1], dec.patch_size))
        h, w = p.shape[1:3]
        p = (p + dec.pos_embed[0, :, :h, :w].permute(1, 2, 0)).flatten(1, 2)
        r = dec.latent_proj(quants[i : i + 1]) + dec.register_pos[None]
        r[:, int(keep[i]):] = dec.mask_token
        if uncond:
            r[:] = dec.null_token
        seqs.append(torch.cat([p, r], dim=1))
        sub.append((p.shape[1], r.shape[1]))
    seq = torch.cat(seqs, dim=1)
    n_orig = seq.shape[1]
    total = -(-n_orig // 128) * 128
    seq = F.pad(seq, (0, 0, 0, total - n_orig))
    mask = _pack_mask([a + b for a, b in sub], None, total, seq.device)
    repeats = torch.tensor([n for s in sub for n in s], device=seq.device)
    for blk in dec.blocks:
        mod = blk.modulation(F.silu(temb)).unflatten(-1, (2, -1)).flatten(0, 1)
        mod = mod.repeat_interleave(repeats, dim=0)[None]
        mod = F.pad(mod, (0, 0, 0, total - n_orig))
        seq = _ref_block(blk, seq, mask, mod)
    outs, start = [], 0
    for i, (np_, nr) in enumerate(sub):
        y = _ln(seq[:, start : start + np_])
        shift, scale = dec.head_modulation(F.silu(temb[i : i + 1])).chunk(2, dim=-1)
        y = F.linear(y * (1 + scale[:, None]) + shift[:, None], dec.head.weight, dec.head.bias)
        g = int(np_**0.5)
        outs.append(y.view(1, g, g, -1))
        start += np_ + nr
    return torch.cat([unpatchify(o, dec.patch_size, dec.channels) for o in outs])


@torch.no_grad()
def ref_step(model, x, t, quants, keep, scale, momentum):
    v_c = _ref_velocity(model, x, t, quants, keep, False)
    v_u = _ref_velocity(model, x, t, quants, keep, True)
    return apg_update(v_c, v_u, scale, momentum)


@torch.no_grad()
def our_step(model, x, t, quants, keep, scale, momentum):
    B = x.shape[0]
    uncond = torch.arange(2 * B, device=x.device) >= B
    v = model.decoder(torch.cat([x, x]), torch.cat([t, t]), torch.cat([quants, quants]),
                      torch.cat([keep, keep]), uncond).float()
    return apg_update(v[:B], v[B:], scale, momentum)


# ---------------------------------------------------------------------- profile
_GEMM = ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear",
         "mkldnn::_linear_pointwise", "aten::_weight_int8pack_mm")
# SDPA kernels, and the CPU bf16 per-head route of ``attend`` (its two GEMMs and softmax: in
# FlexTok only attention calls bmm, baddbmm and softmax)
_ATTN = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_"
         "flash_attention", "aten::_scaled_dot_product_efficient_attention",
         "aten::_flash_attention_forward", "aten::_efficient_attention_forward",
         "aten::_scaled_dot_product_attention_math", "aten::bmm", "aten::baddbmm",
         "aten::_softmax")


def profile_step(fn, top: int = 8) -> dict:
    """Self CPU time of one call of ``fn`` by operator: shares of GEMMs, attention and the rest,
    and the ``top`` operators."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(ops.values()) or 1.0
    gemm = sum(v for k, v in ops.items() if k in _GEMM)
    attn = sum(v for k, v in ops.items() if k in _ATTN)
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])[:top]
    return {"total_s": total / 1e6, "gemm_share": gemm / total, "attention_share": attn / total,
            "other_share": 1 - (gemm + attn) / total,
            "top": [(k, v / 1e6, v / total) for k, v in ranked]}


def print_profile(label: str, prof: dict) -> None:
    t = prof["total_s"]
    print(f"profile {label}: {t:.3f} s self CPU; GEMM {t * prof['gemm_share']:.3f} s "
          f"({100 * prof['gemm_share']:.0f}%), attention {t * prof['attention_share']:.3f} s "
          f"({100 * prof['attention_share']:.0f}%), other {t * prof['other_share']:.3f} s "
          f"({100 * prof['other_share']:.0f}%)")
    for name, secs, share in prof["top"]:
        print(f"    {name:<55} {secs:8.3f} s {100 * share:5.1f}%")


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="flextok_d12_d12")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=2, help="encode batch")
    ap.add_argument("--decode-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1: ratios from process CPU seconds, which survive load)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true", help="operator breakdown of a decode step")
    ap.add_argument("--ks", default=None,
                    help="comma-separated kept-token counts for the decode step (default 1,16,N)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset, zero_init=False).eval().to(dev)
    C, h, w = model.latent_shape
    lat = torch.randn(args.batch, C, h, w, device=dev)
    rows = []
    info = machine_info(dev)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    with torch.no_grad():
        codes = model.quantizer.encode(model.encoder(lat))
        same = float((ref_encode(model, lat) == codes).all(-1).float().mean())
        n = model.config.num_registers
        lat1 = lat[: args.decode_batch]
        quants = model.quantizer.decode(codes[: args.decode_batch])
        t = torch.full((args.decode_batch,), 0.5, device=dev)
        keep = torch.full((args.decode_batch,), 16, device=dev, dtype=torch.long)
        ours_v = our_step(model, lat1, t, quants, keep, 7.5, None)[0]
        ref_v = ref_step(model, lat1, t, quants, keep, 7.5, None)[0]
        dv = float((ours_v - ref_v).abs().max())
    print(f"check: tokens identical to the reference {same:.4f}; "
          f"guided velocity max |diff| {dv:.2e}")

    def ref_ctx():  # the reference runs PyTorch's stock CPU GEMMs, as the official code does
        return cpu_linear_backend_as("aten") if dev.type == "cpu" else contextlib.nullcontext()

    def bf16():
        return torch.autocast(dev.type, dtype=torch.bfloat16)

    def within(ctx, fn):
        def call():
            with ctx():
                return fn()
        return call

    # weights stored in bf16 (the VAE is not used by these measurements)
    model_bf = copy.deepcopy(model).to(torch.bfloat16)
    lat_bf, quants_bf = lat.bfloat16(), quants.bfloat16()
    lat1_bf = lat_bf[: args.decode_batch]

    def enc_bf16w():
        return model_bf.quantizer.encode(model_bf.encoder(lat_bf))

    with torch.no_grad():
        same_bf = float((enc_bf16w() == codes).all(-1).float().mean())
    print(f"check: bf16-weight tokens equal to fp32 tokens {same_bf:.4f} (bf16 rounding)")
    names = ("ours fp32", "reference fp32", "ours bf16 autocast", "ours bf16 weights")

    def measure(what, fns, per, unit, memory, warmup):
        """One group, timed in interleaved rounds; ratios from process CPU seconds (1 thread:
        the work done, whatever share of a core the scheduler gave) and from wall time."""
        cpu: dict[str, float] = {}
        wall = time_interleaved(dict(zip(names, fns)), dev, warmup=warmup,
                                repeats=args.repeats, cpu=cpu)
        sec = cpu if args.threads == 1 and dev.type == "cpu" else wall
        group = []
        for name, fn in zip(names, fns):
            row = dict(label=f"{what} {name}", seconds=sec[name], wall_s=wall[name],
                       cpu_s=cpu[name], per=per(sec[name]), unit=unit)
            if memory:
                row["peak_mib"] = peak_memory_bytes(fn, dev) / 2**20
            group.append(row)
        ours, ref = group[0], group[1]
        ours["vs_reference"] = ref["seconds"] / ours["seconds"]
        ours["vs_reference_wall"] = ref["wall_s"] / ours["wall_s"]
        for r in group[2:]:
            r["vs_our_fp32"] = ours["seconds"] / r["seconds"]
            r["vs_our_fp32_wall"] = ours["wall_s"] / r["wall_s"]
        for r in group:
            print(f"  {r['label']}: {r['cpu_s']:.3f} CPU s, {r['wall_s']:.3f} s wall", flush=True)
        return group

    with torch.no_grad():
        rows += measure("encode", [
            lambda: model.quantizer.encode(model.encoder(lat)),
            within(ref_ctx, lambda: ref_encode(model, lat)),
            within(bf16, lambda: model.quantizer.encode(model.encoder(lat))),
            enc_bf16w], lambda s: args.batch / s, "images/s", True, 1)
        for i, k in enumerate([int(v) for v in args.ks.split(",")] if args.ks else (1, 16, n)):
            kk = torch.full_like(keep, k)
            mem = k == 16  # peak memory does not depend on k (the mask token keeps N registers)
            rows += measure(f"decode step k={k}", [
                lambda kk=kk: our_step(model, lat1, t, quants, kk, 7.5, None),
                within(ref_ctx, lambda kk=kk: ref_step(model, lat1, t, quants, kk, 7.5, None)),
                within(bf16, lambda kk=kk: our_step(model, lat1, t, quants, kk, 7.5, None)),
                lambda kk=kk: our_step(model_bf, lat1_bf, t, quants_bf, kk, 7.5, None)],
                lambda s: s, "s/step", mem, 1 if i == 0 else 0)  # same shapes for every k
        profiles = {}
        if args.profile:
            k16 = torch.full_like(keep, 16)
            profiles["fp32"] = profile_step(lambda: our_step(model, lat1, t, quants, k16, 7.5,
                                                             None))
            profiles["bf16 weights"] = profile_step(
                lambda: our_step(model_bf, lat1_bf, t, quants_bf, k16, 7.5, None))
            profiles["bf16 autocast"] = profile_step(
                within(bf16, lambda: our_step(model, lat1, t, quants, k16, 7.5, None)))
        img = torch.rand(1, 3, *model.image_size, device=dev)
        vae_s = time_call(lambda: model.vae_encode(img), dev, warmup=1, repeats=1)
    rows.append(dict(label="VAE encode (shared diffusers module), 1 image", seconds=vae_s,
                     per=1 / vae_s, unit="images/s"))
    print_table(rows, ["label", "per", "unit", "cpu_s", "wall_s", "vs_reference",
                       "vs_reference_wall", "vs_our_fp32", "vs_our_fp32_wall", "peak_mib"],
                title=f"{args.preset} on {info.get('cpu_model', info.get('gpu', dev))}, "
                      f"{info['torch_threads']} threads (ratios > 1: ours faster)")
    for label, prof in profiles.items():
        print_profile(f"decode step k=16, ours {label}", prof)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after")
    info["load_1m"] = [load_before, load_after]
    write_json(args.json, {"machine": info, "args": vars(args), "rows": rows,
                           "profiles": profiles,
                           "check": {"tokens_identical": same, "velocity_max_abs_diff": dv,
                                     "bf16_weight_tokens_equal": same_bf}})


if __name__ == "__main__":
    main()
