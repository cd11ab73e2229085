"""``TokenizerTask``: train any ``ImageTokenizer`` (VQGAN-style objective).

Per step, optimizer ``"model"``::

    z   = encode_latents(x)                     # [B, *S, D]
    q   = quantize(z)                           # z_q, codes, losses["total"]
    z'  = RobusTok perturbation of q (option)   # some codes -> nearby codes, decoded
    z'' = nested-dropout prefix of z' (option)  # 1D tokenizers with supports_prefix
    x^  = decode_latents(z'')
    L   = w_rec * L1/L2(x^, x) + w_p * P(x^, x) + w_q * q.losses["total"] + w_g * a * hinge_G(D(x^))
          + mean_b w_s(k_b) * (1 - cos(decoder features, frozen teacher features))   (option)

``P`` is LPIPS (``perceptual_network: lpips``) or the Inception perceptual loss on the FID
Inception's intermediate features (``inception``; not LPIPS). ``a`` is the adaptive weight at
``last_layer_weight()``; the GAN terms start at ``gan_start_step``. Optimizer ``"discriminator"``
(only when ``gan_weight > 0``) minimises hinge + LeCam on ``x`` vs the detached ``x^`` of the same
step. With ``proxy_teacher`` set (TiTok two-stage recipe, stage 1) the model's legacy head predicts
the frozen MaskGIT-VQGAN teacher codes with cross-entropy instead of reconstructing pixels. With
``data.token_file`` set (decoder post-training), encoder and quantizer are frozen and a fraction of
the samples decode the tokens from the file (e.g. generator-sampled ones) instead of their own. With
``semantic_weight > 0`` (ReTok's Hierarchical Semantic Regularization) the model's
``decode_latents_and_features`` gives decoder features that are aligned with a frozen, pluggable
teacher (``train/semantic.py``), weighted by each sample's prefix length ``k_b``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_task
from .config import NestedDropoutConfig, RobustnessConfig, TokenizerLossConfig, TrainConfig
from .losses import (
    InceptionPerceptualLoss,
    LeCam,
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    reconstruction_loss,
)
from .task import StepOutput, Task

__all__ = [
    "TokenizerLossConfig",
    "TokenizerTask",
    "TokenizerStep",
    "robustness_schedule",
    "sample_prefix_lengths",
]

log = logging.getLogger(__name__)


def robustness_schedule(cfg: RobustnessConfig, step: int, total_steps: int) -> tuple[float, int]:
    """Annealed (rate, strength) at ``step``: linear from start to end between the two steps."""
    end = cfg.end_step if cfg.end_step is not None else total_steps
    if step < cfg.start_step:
        return 0.0, cfg.strength_start
    t = 1.0 if end <= cfg.start_step else min((step - cfg.start_step) / (end - cfg.start_step), 1.0)
    rate = cfg.rate_start + t * (cfg.rate_end - cfg.rate_start)
    strength = round(cfg.strength_start + t * (cfg.strength_end - cfg.strength_start))
    return rate, max(int(strength), 1)


def sample_prefix_lengths(cfg: NestedDropoutConfig, num_tokens: int, batch: int) -> torch.Tensor:
    """Nested dropout: how many leading tokens each sample keeps, ``[B]`` int64 (global RNG)."""
    lo = max(1, min(cfg.min_tokens, num_tokens))
    n = batch if cfg.per_sample else 1
    if cfg.distribution == "pow2":
        choices = [k for k in (2**i for i in range(int(math.log2(num_tokens)) + 1)) if k >= lo]
        if num_tokens not in choices:
            choices.append(num_tokens)
        keep = torch.tensor(choices)[torch.randint(len(choices), (n,))]
    else:
        keep = torch.randint(lo, num_tokens + 1, (n,))
    if cfg.prob < 1.0:
        skip = torch.rand(n) >= cfg.prob
        keep = torch.where(skip, torch.full_like(keep, num_tokens), keep)
    return keep.expand(batch).clone()


class TokenizerStep(nn.Module):
    """The generator-side forward as one module, so DDP sees one ``forward`` per step."""

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(
        self,
        images: torch.Tensor,
        rate: float = 0.0,
        strength: int = 1,
        keep: torch.Tensor | None = None,
        codes_override: torch.Tensor | None = None,
        override_mask: torch.Tensor | None = None,
        logits: bool = False,
        features: bool = False,
    ):
        tok = self.tokenizer
        quant = tok.quantize(tok.encode_latents(images))
        z = quant.z_q
        changed = None
        if rate > 0:  # RobusTok: decode nearby codes; straight-through only where unchanged
            perturbed = tok.quantizer.perturb(quant.codes, rate, strength)
            changed = (perturbed != quant.codes).any(-1, keepdim=True)
            z_p = tok.quantizer.decode(perturbed).to(z.dtype).detach()
            z = torch.where(changed, z_p, z)
        if codes_override is not None:  # decoder post-training on file tokens
            z_f = tok.quantizer.decode(codes_override).to(z.dtype).detach()
            m = override_mask.view(-1, *([1] * (z.ndim - 1)))
            z = torch.where(m, z_f, z)
        decode = tok.proxy_logits if logits else tok.decode_latents
        if features:  # (recon, decoder features) for semantic regularization
            decode = tok.decode_latents_and_features
        if keep is None or bool((keep == z.shape[1]).all()):
            return decode(z), quant, changed
        outs = None
        for k in keep.unique().tolist():  # one decoder call per distinct prefix length
            idx = (keep == k).nonzero().squeeze(1)
            part = decode(z[idx, :k])
            parts = part if isinstance(part, tuple) else (part,)
            if outs is None:
                outs = [t.new_empty((z.shape[0], *t.shape[1:])) for t in parts]
            for o, t in zip(outs, parts):
                o[idx] = t
        return (tuple(outs) if features else outs[0]), quant, changed


@register_task("tokenizer")
class TokenizerTask(Task):
    loss_config_class = TokenizerLossConfig

    def __init__(
        self, model: nn.Module, loss_config: TokenizerLossConfig, train_config: TrainConfig
    ) -> None:
        super().__init__(model, loss_config, train_config)
        for hook in ("encode_latents", "decode_latents", "quantize", "last_layer_weight"):
            if not hasattr(model, hook):
                raise TypeError(
                    f"TokenizerTask needs an ImageTokenizer; {type(model).__name__} has no {hook}()"
                )
        c, t = loss_config, train_config.trainer
        if t.nested_dropout.enabled and not (
            getattr(model, "supports_prefix", False) and len(model.token_shape) == 1
        ):
            raise ValueError(
                f"trainer.nested_dropout needs a 1D tokenizer with supports_prefix; "
                f"{type(model).__name__} has token_shape {model.token_shape}"
            )
        decoded = tuple(getattr(model, "decoded_size", model.image_size))
        if decoded != tuple(model.image_size) and not c.proxy_teacher:
            raise ValueError(
                f"{type(model).__name__} decodes {model.image_size} images to {decoded} (a "
                "patch size other than 16 with the MaskGIT-VQGAN pixel decoder): pixels cannot "
                "be compared; train the proxy-code stage (loss.proxy_teacher) or use patch_size 16"
            )
        self.modules = {"model": TokenizerStep(model)}
        self.perceptual = None
        if c.perceptual_weight > 0 and c.perceptual_network == "inception":
            self.perceptual = InceptionPerceptualLoss(c.perceptual_taps, c.perceptual_size)
            log.warning("perceptual loss: %s", self.perceptual.label)
        elif c.perceptual_weight > 0:  # lpips: the config made sure the weights file exists
            self.perceptual = PerceptualLoss(c.perceptual_weights)
        if c.gan_weight > 0:
            self.modules["discriminator"] = PatchDiscriminator(3, c.disc_channels, c.disc_layers)
            self.lecam = LeCam(c.lecam_decay)
        self.teacher = None
        if c.proxy_teacher:
            if getattr(getattr(model, "config", None), "decoder_head", None) != "proxy_codes":
                raise ValueError(
                    f"loss.proxy_teacher needs a model with the legacy proxy-code "
                    f"head (decoder_head='proxy_codes', proxy_logits()); "
                    f"{type(model).__name__} has none"
                )
            from ..hub import load

            self.teacher = load(c.proxy_teacher).eval().requires_grad_(False)
        self.semantic = None
        if c.semantic_weight > 0:
            if not hasattr(model, "decode_latents_and_features"):
                raise ValueError(
                    f"loss.semantic_weight needs a model with decoder features "
                    f"(decode_latents_and_features, e.g. ReTok); {type(model).__name__} has none"
                )
            from .semantic import build_teacher

            self.semantic = build_teacher(c.semantic_teacher)
        self.token_file = None
        if train_config.data.token_file:
            self.token_file = _load_token_file(train_config.data.token_file)
            model.requires_grad_(False)  # freeze encoder + quantizer; fine-tune the decoder
            for p in _decoder_params(model):
                p.requires_grad_(True)
        self._recon: torch.Tensor | None = None

    # ------------------------------------------------------------------ losses
    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        images = batch["image"]
        if name == "model":
            self._check_batch(images)
        return self._model_loss(images, batch, step) if name == "model" else self._disc_loss(images)

    def build_dataset(self, train: bool = True):
        """The configured dataset; its first image is checked before training writes anything."""
        ds = super().build_dataset(train)
        if len(ds):
            first = ds[0]
            if isinstance(first, dict) and isinstance(first.get("image"), torch.Tensor):
                self._check_batch(first["image"][None])
        return ds

    def _check_batch(self, images: torch.Tensor) -> None:
        """Training images must have the model's input size (shape only: no device sync)."""
        if getattr(self.model, "num_frames", None) is not None:  # video tokenizers check clips
            return
        h, w = self.model.image_size
        shape = tuple(images.shape)
        if images.ndim != 4 or shape[1] != 3 or shape[2:] != (h, w) or shape[0] == 0:
            raise ValueError(
                f"training images must be [B, 3, {h}, {w}] for {type(self.model).__name__} "
                f"(set data.image_size: {h}); the data gave shape {shape}"
            )
        if not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
            raise TypeError(f"training images must be float in [0, 1] or uint8; got {images.dtype}")

    def _model_loss(self, images: torch.Tensor, batch: Any, step: int) -> StepOutput:
        c, t = self.loss_config, self.train_config.trainer
        for aux in (self.perceptual, self.teacher, getattr(self, "lecam", None), self.semantic):
            if aux is not None:
                aux.to(images.device)
        if self.token_file is not None:
            self.model.quantizer.eval()  # frozen: no codebook / usage updates
        rate, strength = (
            robustness_schedule(t.robustness, step, t.steps) if t.robustness.enabled else (0.0, 1)
        )
        keep = None
        if t.nested_dropout.enabled:
            keep = sample_prefix_lengths(
                t.nested_dropout, self.model.token_shape[0], images.shape[0]
            ).to(images.device)
        override = mask = None
        if self.token_file is not None:
            override = self.token_file[batch["index"].cpu()].to(images.device)
            mask = torch.rand(images.shape[0], device=images.device) < c.posttrain_mix
        out, quant, changed = self.modules["model"](
            images, rate, strength, keep, override, mask, logits=self.teacher is not None,
            features=self.semantic is not None,
        )
        feats = None
        if self.semantic is not None:
            out, feats = out
        logs: dict[str, Any] = {"loss/quantizer": quant.losses["total"].detach()}
        if self.teacher is not None:  # stage 1: predict the teacher's codes
            with torch.no_grad():
                target = self.teacher.encode(images)[..., 0].flatten(1)  # [B, h*w]
            if target.shape[1] != out.shape[1]:
                raise ValueError(
                    f"teacher gives {target.shape[1]} proxy codes per image but the "
                    f"model predicts {out.shape[1]}: image sizes / grids differ"
                )
            rec = F.cross_entropy(out.float().transpose(1, 2), target)  # out: [B, h*w, K]
            self._recon = None
        else:
            rec = reconstruction_loss(out, images, c.reconstruction)
            self._recon = out.detach()
        loss = c.reconstruction_weight * rec + c.quantizer_weight * quant.losses["total"]
        logs["loss/reconstruction"] = rec.detach()
        if self.perceptual is not None and self.teacher is None:
            p = self.perceptual(out, images)
            loss = loss + c.perceptual_weight * p
            logs["loss/perceptual"] = p.detach()
        if c.gan_weight > 0 and step >= c.gan_start_step and self.teacher is None:
            g = hinge_g_loss(self.modules["discriminator"](out))
            w = (
                adaptive_gan_weight(rec, g, self.model.last_layer_weight())
                if c.adaptive_gan_weight
                else torch.ones((), device=g.device)
            )
            loss = loss + c.gan_weight * w * g
            logs.update({"loss/gan_g": g.detach(), "gan/adaptive_weight": w})
        if feats is not None:
            loss = loss + self._semantic_loss(images, feats, keep, logs)
        if changed is not None:
            logs["robust/perturbed_fraction"] = changed.float().mean()
            logs["robust/rate"] = rate
        if keep is not None:
            logs["nested/mean_tokens"] = keep.float().mean()
        for k, v in quant.stats.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                logs[f"quantizer/{k}"] = v.detach()
        logs["loss/total"] = loss.detach()
        return StepOutput(loss, logs)

    def _semantic_loss(self, images: torch.Tensor, feats: torch.Tensor,
                       keep: torch.Tensor | None, logs: dict[str, Any]) -> torch.Tensor:
        """HSR: prefix-weighted ``1 - cos`` between decoder features and the frozen teacher's."""
        from .semantic import prefix_weights, semantic_alignment

        c, total = self.loss_config, self.model.token_shape[0]
        with torch.no_grad():
            target = self.semantic(images)
        per_sample = semantic_alignment(feats, target)
        if keep is None:
            keep = torch.full((images.shape[0],), total, device=images.device)
        w = prefix_weights(keep, total, c.semantic_weight, c.semantic_min_ratio, c.semantic_power)
        logs["loss/semantic"] = per_sample.detach().mean()
        return (w.to(per_sample.device) * per_sample).mean()

    def _disc_loss(self, images: torch.Tensor) -> StepOutput:
        c = self.loss_config
        disc = self.modules["discriminator"]
        logits = disc(torch.cat([images, self._recon]))
        real, fake = logits.chunk(2)
        loss = hinge_d_loss(real, fake)
        logs = {
            "loss/gan_d": loss.detach(),
            "gan/logits_real": real.detach().mean(),
            "gan/logits_fake": fake.detach().mean(),
        }
        if c.lecam_weight > 0:
            reg = self.lecam(real, fake)
            loss = loss + c.lecam_weight * reg
            logs["loss/lecam"] = reg.detach()
        return StepOutput(loss, logs)

    def is_active(self, name: str, step: int) -> bool:
        if name == "discriminator":
            return step >= self.loss_config.gan_start_step and self._recon is not None
        return True

    # ------------------------------------------------------------------ state, media
    def state_dict(self) -> dict[str, Any]:
        return {"lecam": self.lecam.state_dict()} if self.loss_config.gan_weight > 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lecam" in state:
            self.lecam.load_state_dict(state["lecam"])

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        images = batch["image"]
        recon = self.model.reconstruct(images) if self.teacher is None else None
        return {} if recon is None else {"reconstruction": torch.cat([images, recon], dim=-2)}


def _decoder_params(model: nn.Module) -> list[nn.Parameter]:
    """Decoder parameters for post-training: the model's ``decoder`` module (or a named hook)."""
    if hasattr(model, "decoder_parameters"):
        return list(model.decoder_parameters())
    if isinstance(getattr(model, "decoder", None), nn.Module):
        return list(model.decoder.parameters())
    raise ValueError(
        f"decoder post-training needs {type(model).__name__}.decoder (an nn.Module) "
        "or a decoder_parameters() method"
    )


def _load_token_file(path: str | Path) -> torch.Tensor:
    """``codes [N, *S, F]`` int64 aligned with the dataset order, from a safetensors file."""
    from ..generate.tokens import read_codes_file

    return read_codes_file(path, what="data.token_file")[0]["codes"].long()
