"""Collapse probes for ``retok_tiny`` (eval/README.md, "ReTok's collapse"): a plain AdamW loop.

Trains ``retok_tiny`` on GCompris photos at 64x64 (batch 16; the first ``--n`` photos, or with
``--pool N`` a random 16 of the first N each step), with the recipe's nested dropout over all
tokens, and prints every 20 steps: the training L2, the codebook perplexity, the mean pairwise
cosine across the 16 first photos of the flattened pre-quantizer latents (``div``), their
evaluation L2 and distinct codes, and the same cosine at each encoder stage (CNN features, the
Q-Former memory, its queries, each Q-Former layer, ``ln_post``). One switch at a time::

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD nice -n 10 python3 eval/rd_kodak/probe_retok.py --steps 20
    ... --nested 0 | --qw 0 | --bypass 1 | --noagn 1 | --oinit 1 | --lq 1 | --sem 0.5 \
        --over '{"distill_dim": 768}' | --fea 1 | --lr 1e-4 --pool 256 | --over '{"quantizer": ...}'
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

import visualtok.image.retok as retok_module
from visualtok.data.image_io import list_images, load_image
from visualtok.image.vqgan import VQGANDecoder
from visualtok.registry import create_model
from visualtok.train.semantic import build_teacher, prefix_weights, semantic_alignment
from visualtok.train.tokenizer_task import TokenizerStep


def mean_cosine(t: torch.Tensor) -> float:
    """Mean pairwise cosine of the rows of ``t`` flattened per image (diagonal left out)."""
    t = F.normalize(t.flatten(1), dim=-1)
    n = t.shape[0]
    return ((t @ t.T).sum() - n).item() / (n * n - n)


def official_init(m: nn.Module) -> None:
    """The official ``_init_weights`` (trunc-normal 0.02, zero biases) on all but the 1x1 convs
    around the quantizer, which the official model creates after applying it."""
    skip = {id(m.quant_conv), id(m.post_quant_conv)}
    for mod in m.modules():
        if id(mod) in skip:
            continue
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            nn.init.trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


@torch.no_grad()
def stages(m, x: torch.Tensor) -> str:
    """``div`` at each stage of the 2D -> 1D encoder."""
    enc = m.s2to1encoder
    f = m.encoder(x * 2 - 1)
    b, _, g, _ = f.shape
    mem = enc.encoder_embed(enc.ln_pre(f.flatten(2).transpose(1, 2)))
    qs = retok_module.multi_level_queries(mem.transpose(1, 2).reshape(b, -1, g, g),
                                          enc.num_latent_tokens)
    h = enc.global_proj(torch.cat([qs, qs[:, enc.redundant_from:]], 1))
    out = [("cnn", mean_cosine(f)), ("mem", mean_cosine(mem)), ("q", mean_cosine(h))]
    qp = torch.cat([enc.latent_token_positional_embedding,
                    enc.latent_token_positional_embedding_comp])
    for i, layer in enumerate(enc.transformer):
        h = layer(h, mem, pos=enc.positional_embedding, query_pos=qp)
        out.append((f"L{i}", mean_cosine(h)))
    out.append(("lnpost", mean_cosine(enc.ln_post(h))))
    return " ".join(f"{k}={v:.5f}" for k, v in out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--over", default="{}", help="retok_tiny overrides (JSON)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--nested", type=int, default=1, help="0: always all tokens")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--pool", type=int, default=0, help="a random 16 of N photos per step")
    p.add_argument("--qw", type=float, default=1.0, help="weight of the VQ losses")
    p.add_argument("--bypass", type=int, default=0, help="1: no quantizer (raw latents)")
    p.add_argument("--noagn", type=int, default=0, help="1: plain-GroupNorm CNN decoder")
    p.add_argument("--oinit", type=int, default=0, help="1: the official trunc-normal init")
    p.add_argument("--lq", type=int, default=0, help="1: learned queries, no multi-level init")
    p.add_argument("--fea", type=float, default=0, help="official fea_rec_loss (MSE) weight")
    p.add_argument("--sem", type=float, default=0, help="HSR weight (Inception teacher)")
    p.add_argument("--tag", default="")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    files = list_images("../shared/data/images/gcompris")[:max(a.n, a.pool)]
    pool = torch.stack([load_image(f, 64, convert=True) for f in files])
    x0 = pool[:a.n]
    m = create_model("retok_tiny", **json.loads(a.over))
    if a.noagn:
        c = m.config
        torch.manual_seed(1)
        m.decoder = VQGANDecoder(c.channels, tuple(c.decoder_ch_mult), c.num_res_blocks,
                                 c.z_channels, 0.0, attention=False, upsample="d2s")
    if a.bypass:
        m.quantize = lambda z: SimpleNamespace(
            z_q=z, codes=torch.zeros(1), losses={"total": z.sum() * 0},
            stats={"perplexity": torch.zeros(())})
    if a.oinit:
        official_init(m)
    if a.lq:
        w = m.config.encoder_width
        m.s2to1encoder.lq = nn.Parameter(w**-0.5 * torch.randn(m.config.num_latent_tokens, w))
        retok_module.multi_level_queries = (
            lambda mem, n: m.s2to1encoder.lq.expand(mem.shape[0], -1, -1))
    target = None
    if a.sem > 0:
        with torch.no_grad():
            target = build_teacher("inception")(x0)
    step = TokenizerStep(m)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=1e-4)
    total = m.token_shape[0]
    with torch.no_grad():
        print(a.tag, f"init div {mean_cosine(m.encode_latents(x0)):.4f}", stages(m, x0), flush=True)
    t0 = time.process_time()
    for s in range(1, a.steps + 1):
        x = pool[torch.randperm(len(pool))[:16]] if a.pool else x0
        keep = torch.randint(1, total + 1, (x.shape[0],))
        if not a.nested:
            keep = torch.full_like(keep, total)
        aux = 0.0
        if a.fea > 0:  # official feature reconstruction: rec_spatial vs detached CNN features
            f = m.encoder(x * 2 - 1)
            z = F.linear(m.s2to1encoder(f), m.quant_conv.weight.flatten(1), m.quant_conv.bias)
            q = m.quantize(z)
            out = torch.empty_like(x)
            for k in keep.unique().tolist():
                idx = (keep == k).nonzero().squeeze(1)
                rs = m.decode_features(q.z_q[idx, :k])
                out[idx] = (m.decoder(rs) + 1) / 2
                aux = aux + F.mse_loss(rs, f[idx].detach(), reduction="sum") / f[0].numel()
            aux = a.fea * aux / x.shape[0]
        elif a.sem > 0:
            (out, feats), q, _ = step(x, keep=keep, features=True)
            aux = a.sem * (prefix_weights(keep, total, 1.0, 0.1)
                           * semantic_alignment(feats, target)).mean()
        else:
            out, q, _ = step(x, keep=keep)
        rec = F.mse_loss(out, x)
        loss = rec + a.qw * q.losses["total"] + aux
        opt.zero_grad()
        loss.backward()
        if s == 1:
            ge = sum(p.grad.norm() ** 2 for p in m.encoder.parameters()
                     if p.grad is not None) ** 0.5
            print(a.tag, f"grad norm at step 1: CNN encoder {ge:.3g}", flush=True)
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if s % 20 == 0 or s == a.steps:
            m.eval()
            with torch.no_grad():
                z = m.encode_latents(x0)
                qe = m.quantize(z)
                l2 = F.mse_loss(m.decode_latents(qe.z_q), x0).item()
            m.train()
            print(a.tag, f"step {s} rec {rec.item():.4f} ppl {q.stats['perplexity'].item():.1f} "
                  f"div {mean_cosine(z):.5f} evalL2 {l2:.4f} codes {qe.codes.unique().numel()} "
                  f"cpu {time.process_time() - t0:.0f}", stages(m, x0), flush=True)


if __name__ == "__main__":
    main()
