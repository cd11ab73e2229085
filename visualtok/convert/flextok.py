"""Convert official FlexTok checkpoints (apple/ml-flextok) into ``visualtok.image.flextok.FlexTok``.

An official checkpoint directory holds ``model.safetensors`` and a ``config.json`` with the Hydra
wiring (``vae``, ``encoder``, ``decoder``, ``regularizer``, ``flow_matching_noise_module``,
``pipeline``; the encoder and decoder are ``SequentialModuleDictWrapper``s of named modules). The
same wiring may also sit in the safetensors metadata. We never instantiate anything from it: each
module's ``_target_`` must be in ``_WHITELIST``, each keyword argument must be one that the
whitelist entry knows, and the values that change the computation are mapped onto
``FlexTokConfig`` fields (or rejected when we do not implement them). An unknown target or keyword
is a ``ValueError`` that names it.

Weights: ``vae.vae.*`` -> ``vae.*`` (diffusers ``AutoencoderKL``, same names); ``wq``/``wk``/``wv``
are concatenated into our fused ``qkv``; ``adaLN_modulation.1`` -> ``modulation``; the learned
register table ``[1, 1, D, N]`` -> ``[N, D]``; the frozen sin-cos tables are not loaded but checked
against ours. Every official key is consumed and every model key provided.

The VAE architecture comes from, in order: a diffusers ``config.json`` in ``vae/`` (or
``vae_config.json``) beside the checkpoint, the ``vae`` argument, or FlexTok's base VAE config with
the wiring's ``latent_channels`` and ``scaling_factor``.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import config_from_dict
from ..hub import CheckpointError, read_official_state_dict
from ..image.flextok import FLEXTOK_VAE_CONFIG, FlexTok, FlexTokConfig, sincos_2d
from ..registry import register_converter
from .common import Weights, finish_conversion, load_converted, read_official_config

__all__ = [
    "FlexTokWiring",
    "parse_wiring",
    "read_wiring",
    "flextok_config_from_official",
    "convert_flextok_state_dict",
    "convert_flextok",
]

log = logging.getLogger(__name__)

_P = "flextok.model."
# target -> keyword arguments it may carry. Bookkeeping kwargs (read/write keys) are accepted and
# ignored; the ones that change the computation are checked in the parsers below.
_KEYS = {"read_key", "write_key"}
_WHITELIST: dict[str, set[str]] = {
    _P + "utils.dict_ops.PerSampleOp": _KEYS | {"per_sample_op"},
    _P + "preprocessors.patching.PatchEmbedder": {
        "input_tensor_list_read_key", "patches_list_write_key", "n_patches_write_key",
        "patch_sizes", "channels_in", "dim", "flatten_patches", "weight_init_style"},
    _P + "utils.posembs.PositionalEmbeddingAdder": _KEYS | {
        "dim", "max_sizes", "posemb_type", "posemb_scaling", "posemb_write_key"},
    _P + "preprocessors.registers.Registers1D": {
        "input_tensor_list_read_key", "register_sizes_read_write_key", "registers_write_key",
        "dim", "n_min", "n_max", "n_eval", "size_sampling_mode", "ordering_mode",
        "extra_registers_write_key", "extra_registers_dim"},
    _P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker": {
        "input_list_read_keys", "packed_seq_write_key", "block_mask_write_key",
        "inner_packed_shapes_write_key", "outer_packed_shapes_write_key", "mask_mode",
        "max_seq_len", "pad_to_multiple", "emb_packing_fn_write_key", "per_subseq_embs",
        "compile_block_mask", "return_materialized_mask"},
    _P + "trunks.transformers.FlexTransformer": {
        "input_seq_read_key", "output_seq_write_key", "dim", "depth", "head_dim", "mlp_ratio",
        "qkv_bias", "proj_bias", "mlp_bias", "drop", "drop_path_rate", "act_layer", "norm_layer",
        "gated_mlp", "qk_norm", "use_act_checkpoint", "weight_init_style",
        "zero_init_query_proj", "block_mask_read_key", "score_mod_read_key",
        "adaLN_emb_read_key", "adaLN_packing_fn_read_key", "adaLN_expansion",
        "rope_forward_read_key", "intermediate_layer_write_key", "intermediate_layers"},
    _P + "postprocessors.seq_unpacking.SequenceUnpacker": {
        "packed_seq_read_key", "inner_seq_write_keys", "inner_packed_shapes_read_key",
        "outer_packed_shapes_read_key"},
    _P + "postprocessors.heads.LinearHead": _KEYS | {
        "dim", "dim_out", "use_mup_readout", "weight_init_style", "norm_layer",
        "dtype_override", "adaLN_emb_read_key", "adaLN_packing_fn_read_key", "adaLN_bias",
        "proj_bias"},
    _P + "postprocessors.heads.ToPatchesLinearHead": _KEYS | {
        "dim", "channels_out", "patch_sizes", "use_mup_readout", "weight_init_style",
        "norm_layer", "dtype_override", "adaLN_emb_read_key", "adaLN_packing_fn_read_key",
        "adaLN_bias", "proj_bias"},
    _P + "preprocessors.linear.LinearLayer": _KEYS | {
        "dim_in", "dim", "weight_init_style", "dtype_override", "proj_bias"},
    _P + "preprocessors.token_dropout.MaskedNestedDropout": {
        "read_write_key", "dim", "eval_keep_k_read_key", "train_keep_k_write_key",
        "size_sampling_mode"},
    _P + "preprocessors.nullcond.LearnedNullCond": {
        "read_write_key", "dim", "eval_drop_flag_read_key", "dropout_prob",
        "replace_with_single_token"},
    _P + "preprocessors.nullcond.ZeroNullCond": {
        "read_write_key", "eval_drop_flag_read_key", "dropout_prob"},
    _P + "preprocessors.time_embedding.TimestepEmbedder": {
        "timesteps_read_key", "time_embedding_write_key", "dim", "frequency_embedding_size",
        "weight_init_style", "max_timestep", "temb_as_tokens"},
    "flextok.regularizers.quantize_fsq.FSQ": {
        "latents_read_key", "quants_write_key", "tokens_write_key", "levels", "drop_quant_p",
        "corrupt_tokens_p", "min_corrupt_tokens_p", "apply_corrupt_tokens_p", "packed_call"},
    "flextok.vae_wrapper.StableDiffusionVAE": {
        "images_read_key", "vae_latents_read_key", "vae_latents_write_key",
        "images_reconst_write_key", "vae_kl_loss_write_key", "latent_channels",
        "scaling_factor", "dtype_override", "hf_hub_path", "sample_posterior",
        "learnable_logvar", "logvar_init", "compile_encode_fn", "force_vae_encode", "frozen"},
    "flextok.flow_matching.noise_modules.MinRFNoiseModule": {
        "clean_images_read_key", "noised_images_write_key", "timesteps_write_key",
        "sigmas_write_key", "ln", "stratisfied", "mode_scale", "noise_write_key",
        "noise_read_key"},
    "flextok.flow_matching.pipelines.MinRFPipeline": {
        "model", "noise_read_key", "target_sizes_read_key", "latents_read_key",
        "timesteps_read_key", "noised_images_read_key", "reconst_write_key", "out_channels"},
}
_WRAPPER = _P + "utils.wrappers.SequentialModuleDictWrapper"
_TOP = ("flextok.flextok_wrapper.FlexTok", "flextok.flextok_wrapper.FlexTokFromHub")
_PER_SAMPLE_OPS = ("channels_first_to_last", "channels_last_to_first")
_NORM = "flextok.model.layers.norm.Fp32LayerNorm"


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


@dataclass
class Module:
    name: str
    target: str
    kwargs: dict[str, Any]


def _plain(value: Any, where: str) -> Any:
    """A kwarg value: nested ``_target_`` configs are only allowed for known callables."""
    if isinstance(value, dict) and "_target_" in value:
        target = value["_target_"]
        if target.rsplit(".", 1)[-1] in _PER_SAMPLE_OPS and target.startswith("flextok."):
            return target.rsplit(".", 1)[-1]
        if target in ("torch.nn.SiLU", "torch.nn.modules.activation.SiLU"):
            return "silu"
        if target == _NORM:
            if value.get("bias", True) or value.get("elementwise_affine", True):
                raise ValueError(f"{where}: only the non-affine Fp32LayerNorm is supported")
            return "fp32_layernorm"
        raise ValueError(f"{where}: unknown target {target!r} (not in the FlexTok whitelist)")
    return value


def _module(name: str, target: Any, kwargs: dict[str, Any], where: str) -> Module:
    if not isinstance(target, str):
        raise ValueError(f"{where}.{name}: module needs a string target; got {target!r}")
    if target not in _WHITELIST:
        raise ValueError(
            f"{where}.{name}: unknown module target {target!r}; a FlexTok wiring may only use "
            f"{sorted(_short(t) for t in _WHITELIST)}"
        )
    unknown = sorted(set(kwargs) - _WHITELIST[target])
    if unknown:
        raise ValueError(f"{where}.{name} ({_short(target)}): unknown keyword argument(s) "
                         f"{unknown}; known: {sorted(_WHITELIST[target])}")
    return Module(name, target, {k: _plain(v, f"{where}.{name}.{k}") for k, v in kwargs.items()})


def _section(section: Any, where: str) -> list[Module]:
    """A wrapper of named modules (Hydra ``module_dict`` or the fixtures' list) -> ``Module``s."""
    if isinstance(section, list):  # [{"name", "target", "kwargs"}]
        return [_module(m["name"], m.get("target"), dict(m.get("kwargs", {})), where)
                for m in section]
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a module wiring, got {type(section).__name__}")
    if section.get("_target_") != _WRAPPER or not isinstance(section.get("module_dict"), dict):
        raise ValueError(f"{where}: expected a {_WRAPPER} with a module_dict; got target "
                         f"{section.get('_target_')!r}")
    out = []
    for name, spec in section["module_dict"].items():
        spec = dict(spec)
        spec.pop("_partial_", None)
        out.append(_module(name, spec.pop("_target_", None), spec, where))
    return out


def _single(section: Any, where: str) -> Module:
    if isinstance(section, dict) and "target" in section:  # fixture form
        return _module(where, section["target"], dict(section.get("kwargs", {})), where)
    if not isinstance(section, dict) or "_target_" not in section:
        raise ValueError(f"{where}: expected a module config with a _target_")
    spec = dict(section)
    spec.pop("_partial_", None)
    return _module(where, spec.pop("_target_"), spec, where)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# ---------------------------------------------------------------------- wiring -> roles + config
@dataclass
class FlexTokWiring:
    """What a parsed wiring says: our config fields and official module name of each role."""

    fields: dict[str, Any] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # "encoder.patch" -> official name
    vae: dict[str, Any] = field(default_factory=dict)  # StableDiffusionVAE kwargs


def _by_type(mods: list[Module], short: str) -> list[Module]:
    return [m for m in mods if _short(m.target) == short]


def _one(mods: list[Module], short: str, where: str, partial: bool) -> Module | None:
    found = _by_type(mods, short)
    if len(found) > 1:
        raise ValueError(f"{where}: expected one {short}, found {[m.name for m in found]}")
    if not found and not partial:
        raise ValueError(f"{where}: the wiring has no {short} module")
    return found[0] if found else None


def _check_mask(mods: list[Module], where: str, partial: bool, part: str,
                mask: str) -> Module | None:
    """The sequence packer, whose attention mask must be the one ``part`` implements."""
    packer = _one(mods, "BlockWiseSequencePacker", where, partial)
    if packer is not None:
        mode = packer.kwargs.get("mask_mode", "full")
        _require(mode == mask, f"{where}.{packer.name}: the {part} mask must be {mask!r}; "
                 f"got {mode!r}")
    return packer


def _check_transformer(m: Module, where: str) -> dict[str, Any]:
    kw = m.kwargs
    for key, want in (("qkv_bias", False), ("proj_bias", False), ("mlp_bias", False),
                      ("gated_mlp", True), ("qk_norm", True)):
        _require(kw.get(key, want) == want,
                 f"{where}.{m.name}: {key}={kw.get(key)!r} is not supported (FlexTok uses {want})")
    _require(kw.get("act_layer", "silu") == "silu", f"{where}.{m.name}: only SiLU is supported")
    _require(not kw.get("rope_forward_read_key") and not kw.get("score_mod_read_key"),
             f"{where}.{m.name}: RoPE / score mods are not supported")
    return dict(dim=int(kw.get("dim", 768)), depth=int(kw.get("depth", 12)),
                head_dim=int(kw.get("head_dim", 64)), mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
                adaln=kw.get("adaLN_emb_read_key") is not None,
                expansion=int(kw.get("adaLN_expansion", 1)))


def parse_encoder(mods: list[Module], out: FlexTokWiring, partial: bool = False) -> None:
    where = "encoder"
    patch = _one(mods, "PatchEmbedder", where, partial)
    if patch is not None:
        ps = list(patch.kwargs.get("patch_sizes", []))
        _require(len(ps) == 2 and ps[0] == ps[1], f"{where}.{patch.name}: patch_sizes must be "
                 f"square [p, p]; got {ps}")
        out.fields.update(patch_size=int(ps[0]), latent_channels=int(patch.kwargs["channels_in"]))
        out.roles["encoder.patch"] = patch.name
    pos = _one(mods, "PositionalEmbeddingAdder", where, partial)
    if pos is not None:
        kw = pos.kwargs
        _require(kw.get("posemb_type", "sincos") == "sincos"
                 and kw.get("posemb_scaling", "absolute") == "absolute",
                 f"{where}.{pos.name}: only absolute sincos positions are supported")
        sizes = list(kw["max_sizes"])
        _require(len(sizes) == 2 and sizes[0] == sizes[1],
                 f"{where}.{pos.name}: max_sizes must be square (non-square tables are scrambled "
                 f"upstream); got {sizes}")
        out.fields["posemb_grid"] = int(sizes[0])
        out.roles["encoder.pos"] = pos.name
    reg = _one(mods, "Registers1D", where, partial)
    if reg is not None:
        kw = reg.kwargs
        _require(kw.get("ordering_mode", "nested") == "nested",
                 f"{where}.{reg.name}: only ordering_mode 'nested' is supported")
        _require(kw.get("extra_registers_write_key") is None,
                 f"{where}.{reg.name}: extra registers are not supported")
        _require(kw.get("n_eval") in (None, kw["n_max"]),
                 f"{where}.{reg.name}: n_eval must equal n_max (decode takes any prefix)")
        out.fields["num_registers"] = int(kw["n_max"])
        out.roles["encoder.registers"] = reg.name
    _check_mask(mods, where, partial, "encoder", "causal_last")
    trunk = _one(mods, "FlexTransformer", where, partial)
    if trunk is not None:
        t = _check_transformer(trunk, where)
        _require(not t["adaln"], f"{where}.{trunk.name}: the encoder trunk has no adaLN")
        out.fields.update(encoder_dim=t["dim"], encoder_depth=t["depth"], head_dim=t["head_dim"],
                          mlp_ratio=t["mlp_ratio"])
        out.roles["encoder.trunk"] = trunk.name
    head = _one(mods, "LinearHead", where, partial)
    if head is not None:
        kw = head.kwargs
        _require(not kw.get("use_mup_readout", False) and not kw.get("adaLN_emb_read_key")
                 and kw.get("proj_bias", True) and kw.get("norm_layer", "fp32_layernorm")
                 == "fp32_layernorm", f"{where}.{head.name}: only a LayerNorm + Linear head "
                 "without muP readout or adaLN is supported")
        out.fields["_head_dim_out"] = int(kw["dim_out"])
        out.roles["encoder.head"] = head.name


def parse_decoder(mods: list[Module], out: FlexTokWiring, partial: bool = False) -> None:
    where = "decoder"
    order = [m.name for m in mods]
    proj = _one(mods, "LinearLayer", where, partial)
    if proj is not None:
        _require(proj.kwargs.get("proj_bias", True), f"{where}.{proj.name}: needs a bias")
        out.roles["decoder.latent_proj"] = proj.name
    posembs = _by_type(mods, "PositionalEmbeddingAdder")
    reg_key = proj.kwargs.get("write_key") if proj is not None else None
    reg_pos = [m for m in posembs if reg_key is not None and m.kwargs.get("read_key") == reg_key]
    patch_pos = [m for m in posembs if m not in reg_pos]
    _require(len(reg_pos) <= 1 and len(patch_pos) <= 1,
             f"{where}: expected at most one register and one patch position module; got "
             f"{[m.name for m in posembs]}")
    out.fields["register_posemb"] = bool(reg_pos)
    if reg_pos:
        kw = reg_pos[0].kwargs
        _require(kw.get("posemb_type") in ("learnable_sum", "learnable_prod")
                 and len(kw.get("max_sizes", [])) == 1
                 and kw.get("posemb_scaling", "absolute") == "absolute",
                 f"{where}.{reg_pos[0].name}: register positions must be a learned 1D table; got "
                 f"{kw.get('posemb_type')!r} {kw.get('max_sizes')}")
        out.roles["decoder.register_pos"] = reg_pos[0].name
    if patch_pos:
        kw = patch_pos[0].kwargs
        _require(kw.get("posemb_type", "sincos") == "sincos"
                 and kw.get("posemb_scaling", "absolute") == "absolute",
                 f"{where}.{patch_pos[0].name}: only absolute sincos patch positions are supported")
        out.fields["_dec_posemb_grid"] = int(kw["max_sizes"][0])
        out.roles["decoder.pos"] = patch_pos[0].name
    nd = _one(mods, "MaskedNestedDropout", where, partial)
    if nd is not None:
        mode = nd.kwargs.get("size_sampling_mode", "uniform")
        _require(mode in ("uniform", "pow2", "uniform_pow2"),
                 f"{where}.{nd.name}: unknown size_sampling_mode {mode!r}")
        out.fields["keep_sampling"] = mode
        out.roles["decoder.nested_dropout"] = nd.name
    nulls = _by_type(mods, "LearnedNullCond") + _by_type(mods, "ZeroNullCond")
    _require(len(nulls) <= 1, f"{where}: more than one null-condition module")
    if nulls:
        null = nulls[0]
        _require(not null.kwargs.get("replace_with_single_token", False),
                 f"{where}.{null.name}: replace_with_single_token is not supported")
        out.fields["null_condition"] = ("learned" if _short(null.target) == "LearnedNullCond"
                                        else "zero")
        out.fields["cfg_dropout"] = float(null.kwargs.get("dropout_prob", 0.0))
        out.roles["decoder.null"] = null.name
    elif not partial:
        raise ValueError(f"{where}: the wiring has no null-condition module")
    # the register chain must run in the order whose numerics we implement
    chain = [out.roles.get(r) for r in ("decoder.latent_proj", "decoder.register_pos",
                                        "decoder.nested_dropout", "decoder.null")]
    idx = [order.index(n) for n in chain if n is not None]
    _require(idx == sorted(idx), f"{where}: registers must go latent projection -> positions -> "
             f"nested dropout -> null condition; the wiring has {[n for n in chain if n]}")
    patch = _one(mods, "PatchEmbedder", where, partial)
    if patch is not None:
        out.roles["decoder.patch"] = patch.name
        out.fields["_dec_patch"] = list(patch.kwargs.get("patch_sizes", []))
    packer = _check_mask(mods, where, partial, "decoder", "full")
    temb = _one(mods, "TimestepEmbedder", where, partial)
    if temb is not None:
        _require(not temb.kwargs.get("temb_as_tokens", False),
                 f"{where}.{temb.name}: temb_as_tokens is not supported")
        out.fields.update(max_timestep=float(temb.kwargs.get("max_timestep", 1000.0)),
                          frequency_embedding_size=int(
                              temb.kwargs.get("frequency_embedding_size", 256)))
        out.roles["decoder.time"] = temb.name
    trunk = _one(mods, "FlexTransformer", where, partial)
    if trunk is not None:
        t = _check_transformer(trunk, where)
        _require(t["adaln"], f"{where}.{trunk.name}: the decoder trunk must be adaLN-modulated")
        _require(t["expansion"] in (1, 2), f"{where}.{trunk.name}: adaLN_expansion must be 1 or "
                 f"2; got {t['expansion']}")
        if packer is not None:
            per_subseq = bool(packer.kwargs.get("per_subseq_embs", False))
            _require(per_subseq == (t["expansion"] == 2), f"{where}: per_subseq_embs "
                     f"{per_subseq} disagrees with adaLN_expansion {t['expansion']}")
        out.fields.update(decoder_dim=t["dim"], decoder_depth=t["depth"],
                          adaln_expansion=t["expansion"], _dec_head_dim=t["head_dim"],
                          _dec_mlp_ratio=t["mlp_ratio"])
        out.roles["decoder.trunk"] = trunk.name
    head = _one(mods, "ToPatchesLinearHead", where, partial)
    if head is not None:
        kw = head.kwargs
        _require(not kw.get("use_mup_readout", False) and kw.get("proj_bias", True)
                 and kw.get("adaLN_bias", True) and not kw.get("adaLN_packing_fn_read_key")
                 and kw.get("norm_layer", "fp32_layernorm") == "fp32_layernorm",
                 f"{where}.{head.name}: unsupported head options {kw}")
        out.fields["head_adaln"] = kw.get("adaLN_emb_read_key") is not None
        out.roles["decoder.head"] = head.name


def parse_wiring(wiring: dict[str, Any], partial: bool = False) -> FlexTokWiring:
    """Check an official FlexTok wiring and map it onto roles and ``FlexTokConfig`` fields."""
    if not isinstance(wiring, dict):
        raise ValueError(f"a FlexTok wiring is a mapping; got {type(wiring).__name__}")
    if "config" in wiring and isinstance(wiring["config"], dict) and "encoder" not in wiring:
        wiring = wiring["config"]  # PyTorchModelHubMixin nests the init kwarg
    top = wiring.get("_target_")
    if top is not None and top not in _TOP:
        raise ValueError(f"not a FlexTok wiring: top-level target {top!r} (expected one of "
                         f"{list(_TOP)})")
    missing = [k for k in ("encoder", "decoder", "regularizer") if k not in wiring]
    if missing and not partial:
        raise ValueError(f"not a FlexTok wiring: no {missing} section(s) (found "
                         f"{sorted(wiring)[:8]})")
    out = FlexTokWiring()
    if "encoder" in wiring:
        parse_encoder(_section(wiring["encoder"], "encoder"), out, partial)
    if "decoder" in wiring:
        parse_decoder(_section(wiring["decoder"], "decoder"), out, partial)
    if "regularizer" in wiring:
        reg = _single(wiring["regularizer"], "regularizer")
        _require(_short(reg.target) == "FSQ", f"regularizer: expected FSQ; got {reg.target!r}")
        out.fields["levels"] = tuple(int(v) for v in reg.kwargs["levels"])
    if "vae" in wiring:
        out.vae = _single(wiring["vae"], "vae").kwargs
    if "flow_matching_noise_module" in wiring:
        noise = _single(wiring["flow_matching_noise_module"], "flow_matching_noise_module")
        _require(float(noise.kwargs.get("mode_scale", 0.0)) == 0.0
                 and not noise.kwargs.get("stratisfied", False),
                 "flow_matching_noise_module: only plain logit-normal or uniform t is supported")
        out.fields["logit_normal"] = bool(noise.kwargs.get("ln", True))
    if "pipeline" in wiring:
        _single(wiring["pipeline"], "pipeline")
    _consistent(out.fields)
    return out


def _consistent(f: dict[str, Any]) -> None:
    if "_head_dim_out" in f and "levels" in f:
        _require(f["_head_dim_out"] == len(f["levels"]), f"encoder head emits {f['_head_dim_out']}"
                 f" dims but FSQ has {len(f['levels'])} levels")
    if "_dec_head_dim" in f and "head_dim" in f:
        _require(f["_dec_head_dim"] == f["head_dim"] and f["_dec_mlp_ratio"] == f["mlp_ratio"],
                 "encoder and decoder trunks must share head_dim and mlp_ratio")
    if "_dec_posemb_grid" in f and "posemb_grid" in f:
        _require(f["_dec_posemb_grid"] == f["posemb_grid"],
                 "encoder and decoder sin-cos tables must have the same size")
    if "_dec_patch" in f and "patch_size" in f:
        _require(f["_dec_patch"] == [f["patch_size"]] * 2,
                 "encoder and decoder must use the same patch size")


def flextok_config_from_official(wiring: dict[str, Any], vae_config: dict[str, Any] | None = None,
                                 overrides: dict[str, Any] | None = None) -> FlexTokConfig:
    """Official wiring (+ a diffusers VAE config) -> ``FlexTokConfig``."""
    w = parse_wiring(wiring)
    fields = {k: v for k, v in w.fields.items() if not k.startswith("_")}
    fields["head_dim"] = w.fields.get("head_dim", 64)
    channels = int(w.vae.get("latent_channels", 16))
    vae = dict(vae_config) if vae_config is not None else dict(FLEXTOK_VAE_CONFIG,
                                                               latent_channels=channels)
    name = vae.pop("_class_name", "AutoencoderKL")
    _require(name == "AutoencoderKL", f"the VAE config describes a {name!r}, not an AutoencoderKL")
    for k in [k for k in vae if k.startswith("_")]:
        vae.pop(k)
    _require(int(vae.get("latent_channels", -1)) == channels,
             f"the VAE config has latent_channels {vae.get('latent_channels')} but the FlexTok "
             f"wiring's VAE has {channels}")
    scaling = w.vae.get("scaling_factor")
    if scaling is None:
        scaling = vae.get("scaling_factor")
    _require(scaling is not None, "the VAE scaling factor is in neither the wiring nor the VAE "
             "config: pass the VAE's diffusers config.json")
    # the largest input the sin-cos table covers (released models: 16 * 2 * 8 = 256)
    factor = 2 ** (len(vae.get("down_block_types", FLEXTOK_VAE_CONFIG["down_block_types"])) - 1)
    fields["image_size"] = fields.get("posemb_grid", 16) * fields.get("patch_size", 2) * factor
    fields.update(vae=vae, vae_scaling_factor=float(scaling),
                  vae_frozen=bool(w.vae.get("frozen", True)),
                  vae_sample_posterior=bool(w.vae.get("sample_posterior", True)))
    fields.update(overrides or {})
    return config_from_dict(FlexTokConfig, fields).validate()


# ---------------------------------------------------------------------- weights
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _map_block(rest: str, ours: str) -> tuple[str, str | None]:
    """``blocks.i.<official>`` -> (our key, qkv part or None)."""
    m = _BLOCK.fullmatch(rest)
    if m is None:
        return "", None
    i, tail = m.groups()
    base = f"{ours}.blocks.{i}."
    qkv = re.fullmatch(r"attn\.w([qkv])\.weight", tail)
    if qkv:
        return base + "attn.qkv.weight", qkv.group(1)
    if tail == "attn.proj.weight":
        return base + tail, None
    mlp = re.fullmatch(r"mlp\.fc([123])\.weight", tail)
    if mlp:  # FlexTok's fc1 (gate), fc3 (value), fc2 (output) = SwiGLU's w1, w3, w2
        return base + f"mlp.w{mlp.group(1)}.weight", None
    mod = re.fullmatch(r"adaLN_modulation\.1\.(weight|bias)", tail)
    if mod:
        return base + "modulation." + mod.group(1), None
    return "", None


_SIMPLE: dict[str, dict[str, str]] = {  # role -> {official param suffix: our key}
    "encoder.patch": {"patch_proj.weight": "encoder.patch_embed.weight",
                      "patch_proj.bias": "encoder.patch_embed.bias"},
    "encoder.registers": {"registers": "encoder.registers"},
    "encoder.head": {"proj.weight": "encoder.head.weight", "proj.bias": "encoder.head.bias"},
    "decoder.latent_proj": {"proj.weight": "decoder.latent_proj.weight",
                            "proj.bias": "decoder.latent_proj.bias"},
    "decoder.nested_dropout": {"dropout_mask_token": "decoder.mask_token"},
    "decoder.null": {"nullcond": "decoder.null_token"},
    "decoder.patch": {"patch_proj.weight": "decoder.patch_embed.weight",
                      "patch_proj.bias": "decoder.patch_embed.bias"},
    "decoder.time": {"mlp.0.weight": "decoder.time_embed.0.weight",
                     "mlp.0.bias": "decoder.time_embed.0.bias",
                     "mlp.2.weight": "decoder.time_embed.2.weight",
                     "mlp.2.bias": "decoder.time_embed.2.bias"},
    "decoder.head": {"proj.weight": "decoder.head.weight", "proj.bias": "decoder.head.bias",
                     "adaLN_modulation.1.weight": "decoder.head_modulation.weight",
                     "adaLN_modulation.1.bias": "decoder.head_modulation.bias"},
}


def convert_flextok_state_dict(state_dict: dict[str, torch.Tensor], roles: dict[str, str],
                               own: dict[str, torch.Tensor] | None = None
                               ) -> dict[str, torch.Tensor]:
    """Official keys -> ours (see the module docstring). ``roles`` comes from ``parse_wiring``.

    Unknown keys raise ``CheckpointError``; with ``own`` (our state dict) missing or mis-shaped
    keys too. Works on meta tensors (sin-cos tables are then only shape-checked).
    """
    by_name = {(role.split(".")[0], name): role for role, name in roles.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("vae.vae."):
            out["vae." + key[len("vae.vae."):]] = value
            continue
        m = re.fullmatch(r"(encoder|decoder)\.module_dict\.([^.]+)\.(.+)", key)
        role = by_name.get((m.group(1), m.group(2))) if m else None
        if role is None:
            unknown.append(key)
            continue
        part, rest = m.group(1), m.group(3)
        if role in ("encoder.trunk", "decoder.trunk"):
            ours, which = _map_block(rest, part)
            if not ours:
                unknown.append(key)
            elif which is None:
                out[ours] = value
            else:
                qkv.setdefault(ours, {})[which] = value
        elif role in ("encoder.pos", "decoder.pos"):
            _require(rest == "posembs", f"unexpected key {key}")
            _check_sincos(key, value)
        elif role == "decoder.register_pos":
            _require(rest == "posembs" and value.ndim == 4 and value.shape[:2] == (1, 1),
                     f"{key}: expected a learned [1, 1, D, N] table; got {tuple(value.shape)}")
            out["decoder.register_pos"] = value[0, 0].t().contiguous()
        elif rest in _SIMPLE.get(role, {}):
            out[_SIMPLE[role][rest]] = value
        else:
            unknown.append(key)
    for ours, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"official checkpoint has only {sorted(parts)} of wq/wk/wv "
                                  f"for {ours}")
        out[ours] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if own is not None:
        return finish_conversion(own, out, unknown, "FlexTok",
                                 hint="a checkpoint of another model?")
    if unknown:
        raise CheckpointError(f"official FlexTok checkpoint has unknown keys {unknown[:8]}")
    return out


def _check_sincos(key: str, value: torch.Tensor) -> None:
    if value.ndim != 4 or value.shape[0] != 1 or value.shape[2] != value.shape[3]:
        raise CheckpointError(f"{key}: expected a square sin-cos table [1, D, G, G]; got "
                              f"{tuple(value.shape)}")
    if value.is_meta:
        return
    ref = sincos_2d(value.shape[2], value.shape[3], value.shape[1])
    if not torch.allclose(value.float().cpu(), ref, atol=1e-5, rtol=0):
        raise CheckpointError(f"{key} is not FlexTok's fixed 2D sin-cos table")


# ---------------------------------------------------------------------- entry points
def _parse_metadata(meta: dict[str, str]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = ast.literal_eval(v)  # literals only: never evaluates code
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def read_wiring(path: str | Path) -> dict[str, Any]:
    """The wiring of a checkpoint: ``config.json`` of a directory, a JSON file, or the
    safetensors metadata."""
    path = Path(path)
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            path = cfg
        else:
            path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"FlexTok wiring not found: {path}")
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if not meta:
        raise ValueError(f"{path} has no wiring metadata and no config.json lies beside it")
    return _parse_metadata(meta)


def _vae_config_beside(directory: Path) -> dict[str, Any] | None:
    for cand in (directory / "vae" / "config.json", directory / "vae_config.json"):
        if cand.is_file():
            return json.loads(cand.read_text())
    return None


@register_converter("flextok")
def convert_flextok(weights: Weights, config: Any = None, preset: str | None = None,
                    vae_config: dict[str, Any] | str | Path | None = None,
                    overrides: dict[str, Any] | None = None) -> FlexTok:
    """Official FlexTok checkpoint -> ``FlexTok`` in eval mode.

    ``weights``: the checkpoint directory (``model.safetensors`` + ``config.json``), a
    ``.safetensors`` file or a state dict. ``config``: the wiring (dict or path); by default read
    from the directory or the safetensors metadata. ``vae_config``: the VAE's diffusers config.
    """
    directory = None
    if isinstance(weights, (str, Path)):
        path = Path(weights)
        if path.is_dir():
            directory, path = path, path / "model.safetensors"
        else:
            directory = path.parent
        state = read_official_state_dict(path)
        if config is None:
            config = read_wiring(directory if (directory / "config.json").is_file() else path)
    elif isinstance(weights, dict):
        state = weights
    else:
        raise TypeError(f"weights must be a path or a state dict; got {type(weights).__name__}")
    if config is None:
        raise ValueError("convert_flextok needs the official wiring (config.json)")
    wiring = read_wiring(config) if isinstance(config, (str, Path)) else config
    if isinstance(vae_config, (str, Path)):
        vae_config = read_official_config(vae_config, "FlexTok VAE")
    if vae_config is None and directory is not None:
        vae_config = _vae_config_beside(directory)
    cfg = flextok_config_from_official(wiring, vae_config, overrides)
    model = FlexTok(cfg)
    roles = parse_wiring(wiring).roles
    mapped = convert_flextok_state_dict(state, roles, model.state_dict())
    return load_converted(model, mapped, "official FlexTok checkpoint", preset)
