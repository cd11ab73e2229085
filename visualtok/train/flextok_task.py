"""Training tasks for FlexTok (the official release has no training code).

Two stages, both on the shared trainer:

* ``flextok_vae``: the KL VAE (diffusers ``AutoencoderKL``) inside a ``FlexTok``, alone:
  ``L = w_rec * L1/L2(D(z), x) + w_kl * KL(q(z|x) || N(0, I))`` with ``z`` sampled from the
  posterior, images in [-1, 1] as the VAE sees them. Everything but the VAE is frozen.
* ``flextok``: the tokenizer on the frozen VAE's latents: FlexTok's rectified-flow loss
  ``|v(x_t, t, registers) - (noise - x0)|^2`` with nested dropout (``keep_sampling``: uniform or
  powers of two), CFG dropout to the null condition and logit-normal t. Optional REPA-style
  alignment: the decoder's patch features after block ``repa_layer`` (through a 2-layer MLP) are
  aligned, patch by patch, by cosine with a frozen teacher's features of the clean image resampled
  to the patch grid (``train/semantic.py``'s ``semantic_alignment``). The teacher is pluggable the
  same way as ReTok's: any name in the ``TEACHERS`` registry (``register_teacher``); the one
  available offline is the FID Inception network (``eval`` extra), labelled "Inception teacher,
  not the paper's DINOv2". With ``calibrate_scaling`` the latent scaling factor is first set to
  ``1 / std`` of the frozen VAE's posterior means (SD recipe), so the flow sees unit-variance
  latents; it is saved in the model config. ``cache_latents`` keeps the frozen VAE's posteriors
  per dataset index (checked against a fingerprint of each image, so augmented images are
  re-encoded): on small datasets the VAE then runs once per image instead of once per step.

Start the second stage from the first one's checkpoint with ``model.init_from``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import Config, NonNegativeFloat, NonNegativeInt, PositiveInt
from ..nn.linear import Linear
from ..registry import register_task
from .losses import reconstruction_loss
from .semantic import semantic_alignment
from .task import StepOutput, Task

__all__ = ["FlexTokVAELossConfig", "FlexTokVAETask", "FlexTokLossConfig", "FlexTokTask"]

log = logging.getLogger(__name__)


class _FlexTokStage(Task):
    """A training stage of FlexTok (its VAE, then the tokenizer): the model must be a FlexTok."""

    def __init__(self, model: nn.Module, loss_config: Any, train_config: Any) -> None:
        from ..image.flextok import FlexTok

        if not isinstance(model, FlexTok):
            raise TypeError(f"task {self.task_name!r} trains a FlexTok; got {type(model).__name__}")
        super().__init__(model, loss_config, train_config)


@dataclass
class FlexTokVAELossConfig(Config):
    reconstruction: Literal["l1", "l2"] = "l1"
    reconstruction_weight: NonNegativeFloat = 1.0
    kl_weight: NonNegativeFloat = 1e-6  # SD / FlexTok VAE recipe


class _VAEStep(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(images * 2.0 - 1.0).latent_dist
        recon = self.vae.decode(dist.sample()).sample * 0.5 + 0.5
        return recon, dist.kl().mean()


@register_task("flextok_vae")
class FlexTokVAETask(_FlexTokStage):
    loss_config_class = FlexTokVAELossConfig

    def __init__(self, model: nn.Module, loss_config: FlexTokVAELossConfig, train_config) -> None:
        super().__init__(model, loss_config, train_config)
        model.requires_grad_(False)
        model.vae.requires_grad_(True)
        self.modules = {"model": _VAEStep(model.vae)}

    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        images = batch["image"]
        recon, kl = self.modules["model"](images)
        c = self.loss_config
        rec = reconstruction_loss(recon, images, c.reconstruction)
        loss = c.reconstruction_weight * rec + c.kl_weight * kl
        return StepOutput(loss, {"loss/reconstruction": rec.detach(), "loss/kl": kl.detach(),
                                 "loss/total": loss.detach()})

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        images = batch["image"]
        recon = self.model.vae_decode(self.model.vae_encode(images)).clamp(0, 1)
        return {"vae_reconstruction": torch.cat([images, recon], dim=-2)}


@dataclass
class FlexTokLossConfig(Config):
    flow_weight: NonNegativeFloat = 1.0
    repa_weight: NonNegativeFloat = 0.0  # REPA-style alignment to a frozen teacher (0 = off)
    repa_teacher: str = "inception"  # a registered teacher (visualtok.registry.TEACHERS)
    repa_layer: NonNegativeInt = 1  # decoder block whose patch outputs are aligned (0-based)
    calibrate_scaling: bool = False  # first set the latent scaling factor to 1/std (own VAEs)
    calibrate_batches: PositiveInt = 4
    cache_latents: bool = False  # keep the frozen VAE's posteriors by dataset index (small data)
    # nested dropout of this stage; None: the model config's (set here, it is saved with the model)
    keep_sampling: Literal["uniform", "pow2", "uniform_pow2"] | None = None

    def validate(self) -> FlexTokLossConfig:
        super().validate()
        from ..registry import TEACHERS

        if self.repa_teacher not in TEACHERS:
            raise ValueError(f"unknown repa_teacher {self.repa_teacher!r} (loss.repa_teacher); "
                             f"registered teachers: {TEACHERS.names()}")
        return self


class _LatentCache:
    """Frozen-VAE posteriors ``(mean, std)`` keyed by dataset index and a fingerprint of the image
    (two fixed projections, float64): each augmented version (e.g. flipped) is encoded once."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, float, float], tuple[torch.Tensor, torch.Tensor]] = {}
        self._proj: torch.Tensor | None = None

    def _keys(self, images: torch.Tensor, index: torch.Tensor) -> list[tuple[int, float, float]]:
        x = images.detach().double().flatten(1)
        if self._proj is None or self._proj.shape[0] != x.shape[1]:
            g = torch.Generator().manual_seed(0)
            self._proj = torch.rand(x.shape[1], dtype=torch.float64, generator=g)
        fps = torch.stack([x.sum(1), x @ self._proj.to(x.device)], dim=1).tolist()
        return [(int(i), a, b) for i, (a, b) in zip(index.tolist(), fps)]

    @torch.no_grad()
    def posterior(self, vae: nn.Module, images: torch.Tensor,
                  index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self._keys(images, index)
        miss = [j for j, k in enumerate(keys) if k not in self.items]
        if miss:
            dtype = next(vae.parameters()).dtype
            dist = vae.encode((images[miss] * 2.0 - 1.0).to(dtype)).latent_dist
            for j, mean, std in zip(miss, dist.mean, dist.std):
                self.items[keys[j]] = (mean, std)
        return (torch.stack([self.items[k][0] for k in keys]),
                torch.stack([self.items[k][1] for k in keys]))


class _FlowStep(nn.Module):
    """The flow forward as one module (DDP), with the optional REPA head on decoder features."""

    def __init__(self, model: nn.Module, repa_dim: int | None, repa_layer: int) -> None:
        super().__init__()
        self.model = model
        self.repa_layer = repa_layer
        self.repa_head = None
        if repa_dim is not None:
            d = model.config.decoder_dim
            self.repa_head = nn.Sequential(Linear(d, 2 * d), nn.SiLU(), Linear(2 * d, repa_dim))

    def forward(self, images: torch.Tensor,
                latents: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats: list[torch.Tensor] = []
        hook = None
        if self.repa_head is not None:
            block = self.model.decoder.blocks[self.repa_layer]
            hook = block.register_forward_hook(lambda m, i, o: feats.append(o))
        try:
            out = self.model.flow_loss(images, latents=latents)
        finally:
            if hook is not None:
                hook.remove()
        if feats:
            n = feats[0].shape[1] - self.model.config.num_registers  # patch tokens come first
            out["repa_prediction"] = self.repa_head(feats[0][:, :n])  # [B, patches, C]
        return out


def _teacher_width(teacher: nn.Module, image_size: int) -> int:
    """Channels of a teacher's features: its ``feature_dim``, else from one probe forward."""
    dim = getattr(teacher, "feature_dim", None)
    if dim is None:
        with torch.no_grad():
            f = teacher(torch.zeros(1, 3, image_size, image_size))
        dim = f.shape[1] if f.ndim == 4 else f.shape[-1]
    return int(dim)


@register_task("flextok")
class FlexTokTask(_FlexTokStage):
    loss_config_class = FlexTokLossConfig

    def __init__(self, model: nn.Module, loss_config: FlexTokLossConfig, train_config) -> None:
        super().__init__(model, loss_config, train_config)
        if not model.config.vae_frozen:
            raise ValueError("task 'flextok' trains on a frozen VAE: set vae_frozen=True")
        model.vae.requires_grad_(False)
        if loss_config.keep_sampling is not None:
            from dataclasses import replace

            model.config = replace(model.config, keep_sampling=loss_config.keep_sampling)
            model.config.validate()
        self.teacher = None
        repa_dim = None
        if loss_config.repa_weight > 0:
            if not 0 <= loss_config.repa_layer < model.config.decoder_depth:
                raise ValueError(f"loss.repa_layer must be in [0, {model.config.decoder_depth})")
            from .semantic import build_teacher

            self.teacher = build_teacher(loss_config.repa_teacher)
            repa_dim = _teacher_width(self.teacher, model.config.image_size)
            log.info("REPA-style alignment to the frozen %s teacher (papers used DINOv2)",
                     getattr(self.teacher, "label", loss_config.repa_teacher))
        self.modules = {"model": _FlowStep(model, repa_dim, loss_config.repa_layer)}
        self.latent_cache = _LatentCache() if loss_config.cache_latents else None
        self._calibrated = not loss_config.calibrate_scaling
        self._seen: list[torch.Tensor] = []

    @torch.no_grad()
    def _calibrate(self, images: torch.Tensor) -> bool:
        """Collect frozen-VAE posterior means; after ``calibrate_batches`` set 1/std."""
        dist = self.model.vae.encode(images * 2.0 - 1.0).latent_dist
        self._seen.append(dist.mode().float())
        if len(self._seen) < self.loss_config.calibrate_batches:
            return False
        scale = 1.0 / float(torch.cat(self._seen).std())
        self.model.scaling_factor = scale
        self.model.config.vae_scaling_factor = scale
        log.info("flextok: latent scaling factor set to 1/std = %.4f", scale)
        self._calibrated, self._seen = True, []
        return True

    def compute_loss(self, name: str, batch: Any, step: int) -> StepOutput:
        images = batch["image"]
        if not self._calibrated:
            self._calibrate(images)
        latents = None
        if self.latent_cache is not None:  # the same draws as FlexTok.vae_encode's sampling
            mean, std = self.latent_cache.posterior(self.model.vae, images, batch["index"])
            if self.model.config.vae_sample_posterior:
                mean = mean + std * torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
            latents = mean * self.model.scaling_factor
        out = self.modules["model"](images, latents)
        c = self.loss_config
        loss = c.flow_weight * out["flow"]
        logs = {"loss/flow": out["flow"].detach(), "nested/mean_tokens": out["keep"].float().mean()}
        if self.teacher is not None:
            self.teacher.to(images.device)
            with torch.no_grad():
                target = self.teacher(images.clamp(0, 1))
            distance = semantic_alignment(out["repa_prediction"], target).mean()
            loss = loss + c.repa_weight * distance
            logs["loss/repa_cosine"] = (1.0 - distance).detach()
        logs["loss/total"] = loss.detach()
        return StepOutput(loss, logs)

    @torch.no_grad()
    def log_media(self, batch: Any) -> dict[str, torch.Tensor]:
        images = batch["image"][:4]
        n = self.model.max_tokens
        rows = [images] + [self.model.decode(self.model.encode(images, num_tokens=k))
                           for k in sorted({1, max(1, n // 4), n})]
        return {"prefix_reconstructions": torch.cat(rows, dim=-2)}

    def state_dict(self) -> dict[str, Any]:
        return {"scaling_factor": self.model.scaling_factor, "calibrated": self._calibrated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.model.scaling_factor = float(state["scaling_factor"])
            self.model.config.vae_scaling_factor = float(state["scaling_factor"])
            self._calibrated, self._seen = bool(state["calibrated"]), []
