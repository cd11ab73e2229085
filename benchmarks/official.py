"""The official code as a same-run reference: build the unmodified official models from a checkout.

``bench_titok.py --official PATH`` and ``bench_generator.py --official PATH`` call into this module.
It imports the official model classes from a local checkout (``sys.path`` insertion here only,
nothing is installed or patched), builds them with a seeded random init, and converts those exact
weights into ours: TiTok through the library's converter (``visualtok.convert.titok``), LlamaGen's
GPT through the key map below. How to get each checkout (URL + commit) and the pip packages the
official code imports are in ``benchmarks/README.md``.

Official checkouts are plain directories; both repositories use generic top-level package names
(``modeling``, ``autoregressive``, ``utils``), so :func:`import_from_checkout` refuses a module that
is already imported from somewhere else instead of silently timing the wrong code.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "import_from_checkout",
    "kodak_photos",
    "load_average",
    "OfficialTiTok",
    "build_official_titok",
    "llamagen_gpt_state_dict",
    "match_llamagen_positions",
    "OfficialGPT",
    "build_official_gpt",
]

TITOK_CONFIGS = {"titok_s128": "titok_s128.yaml", "titok_b64": "titok_b64.yaml",
                 "titok_l32": "titok_l32.yaml"}


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (the project CPU is shared: every table records them)."""
    return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]


def import_from_checkout(root: str | Path, module: str, marker: str) -> Any:
    """Import ``module`` from the checkout at ``root`` (which must contain ``marker``)."""
    root = Path(root).expanduser().resolve()
    if not (root / marker).is_file():
        raise ValueError(
            f"--official {root}: not a checkout of the official repository (no {marker}); "
            "see benchmarks/README.md for the git clone command"
        )
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", None) or next(iter(loaded.__path__), ""))
        if root not in origin.resolve().parents:
            raise ValueError(
                f"module {top!r} is already imported from {origin}, not from {root}; run the "
                "benchmark in a fresh process"
            )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    mod = importlib.import_module(module)
    if root not in Path(mod.__file__).resolve().parents:
        raise ValueError(f"{module} was imported from {mod.__file__}, not from the checkout {root}")
    return mod


def kodak_photos(n: int = 8, size: int = 256, folder: str | Path | None = None) -> torch.Tensor:
    """The first ``n`` Kodak photos (sorted by name), centre-cropped and resized to ``size``.

    Default folder: ``$VISUALTOK_SHARED/data/images/kodak`` (``../shared`` beside the repository,
    as the tests look for it)."""
    from visualtok.data.image_io import center_crop_resize, list_images, load_image

    repo = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("VISUALTOK_SHARED", repo.parent / "shared"))
    folder = Path(folder) if folder else shared / "data" / "images" / "kodak"
    files = sorted(list_images(folder))[:n]
    if len(files) < n:
        raise ValueError(f"need {n} photos in {folder}; found {len(files)}")
    return torch.stack([center_crop_resize(load_image(f), (size, size)) for f in files])


# ---------------------------------------------------------------------- TiTok (1d-tokenizer)
@dataclass
class OfficialTiTok:
    """The official model, its config, and ours converted from its weights."""

    official: nn.Module
    ours: nn.Module
    config: dict

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Official encode -> codes in our layout ``[B, N, 1]`` (official: ``[B, 1, N]``)."""
        idx = self.official.encode(images)[1]["min_encoding_indices"]
        return idx.reshape(idx.shape[0], -1, 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Official ``decode_tokens`` of our ``[B, N, 1]`` codes, clamped as its demo does."""
        return self.official.decode_tokens(codes.reshape(codes.shape[0], 1, -1)).clamp(0.0, 1.0)


def build_official_titok(
    root: str | Path, preset: str = "titok_s128", seed: int = 0
) -> OfficialTiTok:
    """Official TiTok (legacy two-stage, MaskGIT-VQGAN decoder) with random init, and ours from it.

    The official config is the checkout's own ``configs/infer/TiTok/<preset>.yaml``; our model is
    ``visualtok.convert.titok.convert_titok(official.state_dict(), config=that config)``.
    """
    from omegaconf import OmegaConf  # the official code's config library (pip install omegaconf)

    from visualtok.convert.titok import convert_titok

    if preset not in TITOK_CONFIGS:
        raise ValueError(f"--official supports presets {sorted(TITOK_CONFIGS)}; got {preset!r}")
    mod = import_from_checkout(root, "modeling.titok", "modeling/titok.py")
    cfg_path = Path(root).expanduser() / "configs/infer/TiTok" / TITOK_CONFIGS[preset]
    cfg = OmegaConf.load(cfg_path)
    torch.manual_seed(seed)
    official = mod.TiTok(cfg).eval()
    config = OmegaConf.to_container(cfg, resolve=True)
    ours = convert_titok(official.state_dict(), config=config).eval()
    ours.model_name = preset
    return OfficialTiTok(official, ours, config)


# ---------------------------------------------------------------------- GPT (LlamaGen)
_LLAMAGEN_RENAMES = (
    (r"^cls_embedding\.embedding_table\.weight$", "class_embedding.weight"),
    (r"^tok_embeddings\.weight$", "embed.embedding.weight"),
    (r"^output\.weight$", "head.output.weight"),
    (r"^(layers\.\d+\.attention)\.wqkv\.weight$", r"\1.qkv.weight"),
    (r"^(layers\.\d+\.attention)\.wo\.weight$", r"\1.proj.weight"),
)
# state the official model carries that is not a weight: the KV-cache buffers of setup_caches
_LLAMAGEN_SKIP = re.compile(r"\.kv_cache\.(k|v)_cache$")


def llamagen_gpt_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """LlamaGen c2i ``Transformer`` keys -> our ``GPT`` keys; raise on any unmapped or missing key.

    Renames: ``cls_embedding.embedding_table`` -> ``class_embedding`` (both keep the null class in
    the last row), ``tok_embeddings`` -> ``embed.embedding``, ``attention.wqkv``/``wo`` ->
    ``attention.qkv``/``proj`` (the same q, k, v row order and interleaved rotary pairs), ``output``
    -> ``head.output``; norms and ``feed_forward.w1/w2/w3`` keep their names.
    """
    from visualtok.hub import CheckpointError, describe_state_dict_mismatch

    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if _LLAMAGEN_SKIP.search(key):
            continue
        new = key
        for pattern, repl in _LLAMAGEN_RENAMES:
            new = re.sub(pattern, repl, new)
        if new in own:
            out[new] = value
        else:
            unknown.append(key)
    problems = describe_state_dict_mismatch(own, out, unexpected=unknown)
    if problems:
        raise CheckpointError(
            f"LlamaGen GPT weights do not match the configured GPT: {problems} "
            "(unexpected keys carry their LlamaGen names)"
        )
    return out


def match_llamagen_positions(model: nn.Module, freqs_cis: torch.Tensor) -> None:
    """Give our GPT LlamaGen's position table (2D RoPE on the grid, zero rows for the class token).

    ``freqs_cis``: LlamaGen's ``[cls + grid^2, head_dim/2, 2]`` (cos, sin) table. Our GPT uses 1D
    RoPE by default; the weights only give the same tokens with the same table, so the benchmark
    copies it into ``rope_cos``/``rope_sin`` (positions 0 .. max_len-1 of our sequence
    ``[cond, x_0 .. x_{N-2}]`` are LlamaGen's rows 0 .. N-1).
    """
    n, half = model.rope_cos.shape
    if freqs_cis.ndim != 3 or freqs_cis.shape[1:] != (half, 2) or freqs_cis.shape[0] < n:
        raise ValueError(
            f"LlamaGen freqs_cis must be [>= {n}, {half}, 2]; got {tuple(freqs_cis.shape)}"
        )
    with torch.no_grad():
        model.rope_cos.copy_(freqs_cis[:n, :, 0])
        model.rope_sin.copy_(freqs_cis[:n, :, 1])


@dataclass
class OfficialGPT:
    """LlamaGen's model, its ``generate`` function, and our GPT converted from its weights."""

    official: nn.Module
    ours: nn.Module
    generate_fn: Callable[..., torch.Tensor]

    def generate(self, labels: torch.Tensor, num_tokens: int, cfg_scale: float | None,
                 greedy: bool = False) -> torch.Tensor:
        """LlamaGen's own sampler: ``generate(model, cond, max_new_tokens, cfg_scale, ...)``.

        Full softmax sampling (top-k 0, top-p 1, temperature 1), or argmax with ``greedy``.
        Returns ``[B, num_tokens]`` token ids.
        """
        return self.generate_fn(
            self.official, labels, num_tokens, cfg_scale=cfg_scale or 1.0, temperature=1.0,
            top_k=0, top_p=1.0, sample_logits=not greedy,
        )


def build_official_gpt(root: str | Path, size: str = "GPT-B", seed: int = 0) -> OfficialGPT:
    """LlamaGen c2i GPT (vocab 16384, 256 tokens, 1000 classes) with random init, and ours from it.

    LlamaGen zero-initialises its output layer (so does ours); a seeded normal(0, 0.02) output
    layer is drawn first so that sampling is not uniform, as with trained weights.
    """
    from visualtok import create_model

    gpt = import_from_checkout(root, "autoregressive.models.gpt", "autoregressive/models/gpt.py")
    gen = import_from_checkout(root, "autoregressive.models.generate",
                               "autoregressive/models/generate.py")
    presets = {"GPT-B": "gpt_b", "GPT-L": "gpt_l"}
    if size not in presets:
        raise ValueError(f"official GPT size must be one of {sorted(presets)}; got {size!r}")
    torch.manual_seed(seed)
    official = gpt.GPT_models[size](
        vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type="c2i"
    ).eval()
    with torch.no_grad():
        nn.init.normal_(official.output.weight, std=0.02)
    ours = create_model(presets[size]).eval()
    from visualtok.hub import load_state_dict_strict

    load_state_dict_strict(ours, llamagen_gpt_state_dict(official.state_dict(), ours),
                           source="LlamaGen GPT")
    match_llamagen_positions(ours, official.freqs_cis)
    return OfficialGPT(official, ours, gen.generate)


DAC_16KHZ_KWARGS = dict(encoder_rates=[2, 4, 5, 8], decoder_rates=[8, 5, 4, 2], n_codebooks=12,
                        sample_rate=16000)


def build_official_dac_16khz(dac_module: Any) -> tuple[nn.Module, nn.Module]:
    """(official ``dac.DAC``, ours) for the released 16 kHz architecture: a seeded random init
    with every parameter perturbed (so no weight is at its init value), converted by our
    converter from the official ``{'state_dict', 'metadata': {'kwargs'}}`` layout."""
    from visualtok.convert import convert_checkpoint

    torch.manual_seed(0)
    ref = dac_module.DAC(**DAC_16KHZ_KWARGS).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    ours = convert_checkpoint("dac", {"state_dict": ref.state_dict(),
                                      "metadata": {"kwargs": DAC_16KHZ_KWARGS}})
    return ref, ours
