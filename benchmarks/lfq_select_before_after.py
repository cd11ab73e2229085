"""LFQ inference before and after the select change, beside the like-for-like reference.

"Before" is the previous ``_quantize`` (bool bits, then ``torch.where`` picks +-scale); "after" is
the library's (bits as floats from one comparison, values by a multiply-add). The reference is
vector-quantize-pytorch's LFQ with ``bits / g`` codebooks (the same group-wise entropy). All three
run in one process, interleaved, one thread; the script checks that before and after give equal
codes and values, then prints microseconds per call (wall and process CPU).

    python benchmarks/lfq_select_before_after.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import time_interleaved  # noqa: E402
from visualtok.quantize import QuantizerConfig, build_quantizer  # noqa: E402
from visualtok.quantize.lfq import LookupFreeQuantizer  # noqa: E402


class Before(LookupFreeQuantizer):
    """The previous inference path: bool bits and a select."""

    def _quantize(self, z: torch.Tensor):
        bits = z > 0
        q = torch.where(bits, self.config.bit_scale, -self.config.bit_scale)
        return q, self.bits_to_codes(bits), {}, {}


def no_grad_call(module: torch.nn.Module, z: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            module(z)
    return run


def main() -> None:
    from vector_quantize_pytorch import LFQ

    torch.set_num_threads(1)
    for bits, g in ((14, 7), (18, 9)):
        cfg = QuantizerConfig(type="lfq", dim=bits, group_size=g, beta=0.25, entropy_weight=0.1)
        after, before = build_quantizer(cfg).eval(), Before(cfg).eval()
        ref = LFQ(dim=bits, codebook_size=2**g, entropy_loss_weight=0.1,
                  commitment_loss_weight=0.25, diversity_gamma=1.0, num_codebooks=bits // g,
                  codebook_scale=1.0, frac_per_sample_entropy=1.0, has_projections=False,
                  soft_clamp_input_value=None, spherical=False,
                  force_quantization_f32=True).eval()
        z = torch.randn(4, 1024, bits)
        a, b = after(z), before(z)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)
        fns = {"before": no_grad_call(before, z), "after": no_grad_call(after, z),
               "ref": no_grad_call(ref, z)}
        cpu: dict[str, float] = {}
        wall = time_interleaved(fns, warmup=20, repeats=1000, cpu=cpu)
        us = ", ".join(f"{k} {wall[k] * 1e6:.0f}/{cpu[k] * 1e6:.0f}" for k in fns)
        print(f"LFQ 2^{bits} (g={g}) inference, 4096 tokens, us per call (wall/CPU): {us}; "
              f"after/before {cpu['before'] / cpu['after']:.2f}x, "
              f"after vs ref {cpu['ref'] / cpu['after']:.2f}x (CPU), "
              f"{wall['ref'] / wall['after']:.2f}x (wall)")


if __name__ == "__main__":
    main()
