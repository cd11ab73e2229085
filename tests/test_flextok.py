"""FlexTok: converter (wiring whitelist, official key names, CLI), sampler determinism, the
flexible-length API and clear errors. Parity with the official code is in test_flextok_parity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import visualtok
from visualtok.cli import main as cli_main
from visualtok.convert.flextok import convert_flextok, parse_wiring
from visualtok.hub import CheckpointError
from visualtok.image.flextok import TINY_VAE_CONFIG, FlexTok, FlexTokConfig

pytestmark = pytest.mark.usefixtures("one_thread")

P = "flextok.model."
TINY = dict(image_size=32, vae=dict(TINY_VAE_CONFIG, scaling_factor=0.7), num_registers=8,
            posemb_grid=2, encoder_dim=32, encoder_depth=1, decoder_dim=32, decoder_depth=2,
            head_dim=32, steps=3, zero_init=False)


@pytest.fixture(scope="module")
def model() -> FlexTok:
    torch.manual_seed(0)
    return FlexTok(FlexTokConfig(**TINY)).eval()


def official_wiring(cfg: FlexTokConfig) -> dict:
    """The Hydra wiring the released checkpoints carry, for ``cfg`` (our reading of it)."""
    def m(target, **kw):
        return {"_target_": P + target, **kw}

    de, dd, n = cfg.encoder_dim, cfg.decoder_dim, cfg.num_registers
    ps, grid = [cfg.patch_size] * 2, [cfg.posemb_grid] * 2
    enc = {
        "enc_channels_to_last": m("utils.dict_ops.PerSampleOp", read_key="vae_latents",
                                  write_key="vae_latents_bhwc", per_sample_op={
                                      "_target_": P + "utils.dict_ops.channels_first_to_last",
                                      "_partial_": True}),
        "enc_patch_emb": m("preprocessors.patching.PatchEmbedder",
                           input_tensor_list_read_key="vae_latents_bhwc",
                           patches_list_write_key="enc_patches", n_patches_write_key="n",
                           channels_in=cfg.latent_channels, dim=de, patch_sizes=ps,
                           flatten_patches=False),
        "enc_posemb_module": m("utils.posembs.PositionalEmbeddingAdder", read_key="enc_patches",
                               write_key="enc_patches", dim=de, max_sizes=grid,
                               posemb_type="sincos", posemb_scaling="absolute"),
        "enc_register_module": m("preprocessors.registers.Registers1D",
                                 input_tensor_list_read_key="enc_patches",
                                 register_sizes_read_write_key="register_sizes",
                                 registers_write_key="enc_registers", dim=de, n_min=n, n_max=n,
                                 size_sampling_mode="uniform", ordering_mode="nested"),
        "enc_seq_packer": m("preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                            input_list_read_keys=["enc_patches", "enc_registers"],
                            packed_seq_write_key="enc_seq", block_mask_write_key="enc_mask",
                            inner_packed_shapes_write_key="a", outer_packed_shapes_write_key="b",
                            mask_mode="causal_last", pad_to_multiple=128),
        "enc_transformer": m("trunks.transformers.FlexTransformer", input_seq_read_key="enc_seq",
                             output_seq_write_key="enc_seq", dim=de, depth=cfg.encoder_depth,
                             head_dim=cfg.head_dim, block_mask_read_key="enc_mask"),
        "enc_unpacker": m("postprocessors.seq_unpacking.SequenceUnpacker",
                          packed_seq_read_key="enc_seq",
                          inner_seq_write_keys=["enc_patches", "enc_registers"],
                          inner_packed_shapes_read_key="a", outer_packed_shapes_read_key="b"),
        "enc_to_latents": m("postprocessors.heads.LinearHead", read_key="enc_registers",
                            write_key="enc_registers", dim=de, dim_out=6, use_mup_readout=False,
                            weight_init_style="zero", dtype_override=None),
    }
    dec = {
        "dec_from_latents": m("preprocessors.linear.LinearLayer", read_key="quants",
                              write_key="dec_registers", dim_in=6, dim=dd),
        "dec_registers_posemb_module": m("utils.posembs.PositionalEmbeddingAdder",
                                         read_key="dec_registers", write_key="dec_registers",
                                         dim=dd, max_sizes=[n], posemb_type="learnable_sum",
                                         posemb_scaling="absolute"),
        "dec_nested_dropout": m("preprocessors.token_dropout.MaskedNestedDropout",
                                read_write_key="dec_registers", dim=dd,
                                eval_keep_k_read_key="eval_keep_k",
                                train_keep_k_write_key="train_keep_k",
                                size_sampling_mode="uniform"),
        "dec_latent_dropout": m("preprocessors.nullcond.LearnedNullCond",
                                read_write_key="dec_registers", dim=dd, dropout_prob=0.1),
        "dec_noise_channels_to_last": m("utils.dict_ops.PerSampleOp", read_key="noised",
                                        write_key="noised_bhwc",
                                        per_sample_op="channels_first_to_last"),
        "dec_noise_patch_emb": m("preprocessors.patching.PatchEmbedder",
                                 input_tensor_list_read_key="noised_bhwc",
                                 patches_list_write_key="dec_p", n_patches_write_key="dn",
                                 channels_in=cfg.latent_channels, dim=dd, patch_sizes=ps,
                                 flatten_patches=False),
        "dec_patches_posemb_module": m("utils.posembs.PositionalEmbeddingAdder", read_key="dec_p",
                                       write_key="dec_patches", dim=dd, max_sizes=grid,
                                       posemb_type="sincos", posemb_scaling="absolute"),
        "dec_seq_packer": m("preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                            input_list_read_keys=["dec_patches", "dec_registers"],
                            packed_seq_write_key="dec_seq", block_mask_write_key="dec_mask",
                            inner_packed_shapes_write_key="c", outer_packed_shapes_write_key="d",
                            mask_mode="full", pad_to_multiple=128,
                            emb_packing_fn_write_key="pack_fn", per_subseq_embs=True),
        "dec_time_embedder": m("preprocessors.time_embedding.TimestepEmbedder",
                               timesteps_read_key="timesteps", time_embedding_write_key="temb",
                               dim=dd, max_timestep=1.0),
        "dec_transformer": m("trunks.transformers.FlexTransformer", input_seq_read_key="dec_seq",
                             output_seq_write_key="dec_seq", dim=dd, depth=cfg.decoder_depth,
                             head_dim=cfg.head_dim, block_mask_read_key="dec_mask",
                             adaLN_emb_read_key="temb", adaLN_packing_fn_read_key="pack_fn",
                             adaLN_expansion=2),
        "dec_unpacker": m("postprocessors.seq_unpacking.SequenceUnpacker",
                          packed_seq_read_key="dec_seq",
                          inner_seq_write_keys=["dec_patches", "dec_registers"],
                          inner_packed_shapes_read_key="c", outer_packed_shapes_read_key="d"),
        "dec_to_patches": m("postprocessors.heads.ToPatchesLinearHead", read_key="dec_patches",
                            write_key="dec_patches", dim=dd, channels_out=cfg.latent_channels,
                            patch_sizes=ps, use_mup_readout=False, weight_init_style="zero",
                            adaLN_emb_read_key="temb"),
        "dec_channels_to_first": m("utils.dict_ops.PerSampleOp", read_key="dec_patches",
                                   write_key="velocity", per_sample_op="channels_last_to_first"),
    }
    wrapper = P + "utils.wrappers.SequentialModuleDictWrapper"
    return {
        "_target_": "flextok.flextok_wrapper.FlexTok",
        "vae": {"_target_": "flextok.vae_wrapper.StableDiffusionVAE", "images_read_key": "rgb",
                "vae_latents_read_key": "vae_latents", "vae_latents_write_key": "vae_latents",
                "images_reconst_write_key": "rgb_rec", "latent_channels": cfg.latent_channels,
                "scaling_factor": cfg.vae["scaling_factor"], "frozen": True},
        "encoder": {"_target_": wrapper, "module_dict": enc},
        "decoder": {"_target_": wrapper, "module_dict": dec},
        "regularizer": {"_target_": "flextok.regularizers.quantize_fsq.FSQ",
                        "latents_read_key": "enc_registers", "quants_write_key": "quants",
                        "tokens_write_key": "tokens", "levels": [8, 8, 8, 5, 5, 5]},
        "flow_matching_noise_module": {
            "_target_": "flextok.flow_matching.noise_modules.MinRFNoiseModule",
            "clean_images_read_key": "vae_latents", "noised_images_write_key": "noised",
            "timesteps_write_key": "timesteps", "sigmas_write_key": "sigmas", "ln": True},
        "pipeline": {"_target_": "flextok.flow_matching.pipelines.MinRFPipeline",
                     "_partial_": True, "latents_read_key": "quants", "out_channels": 16},
    }


def official_state_dict(model: FlexTok) -> dict[str, torch.Tensor]:
    """Our weights under the official key names (the inverse of the converter, written apart)."""
    sd, out = model.state_dict(), {}
    e, d = "encoder.module_dict.", "decoder.module_dict."
    names = {"encoder.patch_embed.": e + "enc_patch_emb.patch_proj.",
             "encoder.head.": e + "enc_to_latents.proj.",
             "decoder.latent_proj.": d + "dec_from_latents.proj.",
             "decoder.patch_embed.": d + "dec_noise_patch_emb.patch_proj.",
             "decoder.time_embed.": d + "dec_time_embedder.mlp.",
             "decoder.head_modulation.": d + "dec_to_patches.adaLN_modulation.1.",
             "decoder.head.": d + "dec_to_patches.proj."}
    for key, v in sd.items():
        if key.startswith("vae."):
            out["vae.vae." + key[4:]] = v
        elif key == "encoder.registers":
            out[e + "enc_register_module.registers"] = v
        elif key == "decoder.register_pos":
            out[d + "dec_registers_posemb_module.posembs"] = v.t()[None, None].clone()
        elif key == "decoder.mask_token":
            out[d + "dec_nested_dropout.dropout_mask_token"] = v
        elif key == "decoder.null_token":
            out[d + "dec_latent_dropout.nullcond"] = v
        elif ".blocks." in key:
            part, rest = key.split(".blocks.", 1)
            base = (e + "enc_transformer" if part == "encoder" else d + "dec_transformer")
            base += ".blocks." + rest.split(".", 1)[0] + "."
            tail = rest.split(".", 1)[1]
            if tail == "attn.qkv.weight":
                for name, w in zip("qkv", v.chunk(3, dim=0)):
                    out[base + f"attn.w{name}.weight"] = w.clone()
            elif tail.startswith("modulation."):
                out[base + "adaLN_modulation.1." + tail.split(".")[1]] = v
            elif tail.startswith("mlp.w"):  # SwiGLU w1/w2/w3 = FlexTok's fc1/fc2/fc3
                out[base + "mlp.fc" + tail[len("mlp.w"):]] = v
            else:
                out[base + tail] = v
        else:
            prefix = next(p for p in names if key.startswith(p))
            out[names[prefix] + key[len(prefix):]] = v
    g = model.config.posemb_grid
    out[e + "enc_posemb_module.posembs"] = model.encoder.pos_embed[:, :, :g, :g].clone()
    out[d + "dec_patches_posemb_module.posembs"] = model.decoder.pos_embed.clone()
    return out


@pytest.fixture(scope="module")
def official_dir(model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("official")
    save_file({k: v.contiguous() for k, v in official_state_dict(model).items()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(official_wiring(model.config)))
    (d / "vae").mkdir()
    (d / "vae" / "config.json").write_text(json.dumps(
        {"_class_name": "AutoencoderKL", "_diffusers_version": "0.18.0", **model.config.vae}))
    return d


def test_convert_cli_roundtrip_is_exact(model, official_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    assert cli_main(["convert", "flextok", str(official_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = visualtok.load(out)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert loaded.config.vae_scaling_factor == 0.7 and loaded.config.max_timestep == 1.0
    x = torch.rand(2, 3, 32, 32)
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert loaded.config.steps == 20 and loaded.config.guidance_scale == 7.5  # paper defaults
    assert torch.equal(loaded.decode(codes, steps=3), model.decode(codes))


def test_decode_same_seed_is_bitwise_repeatable(model):
    codes = model.encode(torch.rand(2, 3, 32, 32), num_tokens=5)
    a = model.decode(codes, generator=torch.Generator().manual_seed(3))
    b = model.decode(codes, generator=torch.Generator().manual_seed(3))
    c = model.decode(codes, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.decode(codes), model.decode(codes))  # default generator: seed 0
    # the sampler starts from per-sample draws of the given generator, in order
    g = torch.Generator().manual_seed(3)
    noise = torch.cat([torch.randn((1, *model.latent_shape), generator=g) for _ in range(2)])
    z_q = model.quantizer.decode(codes)
    lat = model.sample_latents(z_q, noise=noise)
    assert torch.equal(lat, model.sample_latents(z_q, generator=torch.Generator().manual_seed(3)))


def test_guidance_modes_differ_and_cfg_scale_one_is_conditional(model):
    z_q = model.quantizer.decode(model.encode(torch.rand(1, 3, 32, 32)))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    apg = model.sample_latents(z_q, guidance_scale=3.0, apg=True, generator=g())
    cfg = model.sample_latents(z_q, guidance_scale=3.0, apg=False, generator=g())
    plain = model.sample_latents(z_q, guidance_scale=1.0, generator=g())
    assert not torch.equal(apg, cfg) and not torch.equal(cfg, plain)
    assert torch.isfinite(apg).all()


def test_prefix_api(model):
    x = torch.rand(2, 3, 32, 32)
    assert model.supports_prefix and model.max_tokens == 8
    full = model.encode(x)
    for k in (1, 3, 8):
        codes = model.encode(x, num_tokens=k)
        assert codes.shape == (2, k, 6) and torch.equal(codes, full[:, :k])
        y = model.decode(codes)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    for bad in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="num_tokens"):
            model.encode(x, num_tokens=bad)
    with pytest.raises(ValueError, match="codes must be"):
        model.decode(full[:, :0])
    with pytest.raises(ValueError, match="codes must be"):
        model.decode(torch.cat([full, full[:, :1]], dim=1))
    with pytest.raises(ValueError, match="steps"):
        model.decode(full, steps=0)


def test_titok_shares_the_flexible_length_api():
    tok = visualtok.create_model("titok_tiny").eval()
    x = torch.rand(1, 3, 64, 64)
    assert tok.supports_prefix and tok.max_tokens == 32
    codes = tok.encode(x, num_tokens=4)
    assert codes.shape == (1, 4, 1) and torch.equal(codes, tok.encode(x)[:, :4])
    assert tok.decode(codes).shape == x.shape
    with pytest.raises(ValueError, match=r"num_tokens must be an int in \[1, 32\]"):
        tok.encode(x, num_tokens=33)


def test_wiring_unknown_target_is_an_error_naming_it(model):
    w = official_wiring(model.config)
    w["decoder"]["module_dict"]["dec_time_embedder"]["_target_"] = "os.system"
    with pytest.raises(ValueError, match=r"dec_time_embedder: unknown module target 'os.system'"):
        parse_wiring(w)
    w = official_wiring(model.config)
    w["encoder"]["module_dict"]["enc_transformer"]["act_layer"] = {
        "_target_": "builtins.eval", "_partial_": True}
    with pytest.raises(ValueError, match="unknown target 'builtins.eval'"):
        parse_wiring(w)
    w = official_wiring(model.config)
    w["encoder"]["module_dict"]["enc_to_latents"]["surprise"] = 1
    with pytest.raises(ValueError, match=r"enc_to_latents \(LinearHead\): unknown keyword"):
        parse_wiring(w)


def test_wiring_of_another_model_is_rejected(model, official_dir, tmp_path):
    with pytest.raises(ValueError, match="not a FlexTok wiring"):
        parse_wiring({"model": {"vq_model": {"codebook_size": 4096}}})
    with pytest.raises(ValueError, match="not a FlexTok wiring"):
        parse_wiring({**official_wiring(model.config), "_target_": "modeling.titok.TiTok"})
    w = official_wiring(model.config)
    w["encoder"]["module_dict"]["enc_seq_packer"]["mask_mode"] = "full"
    with pytest.raises(ValueError, match="causal_last"):
        parse_wiring(w)


def test_checkpoint_of_another_model_is_rejected(model, official_dir, tmp_path):
    sd = official_state_dict(model)
    sd.pop("decoder.module_dict.dec_latent_dropout.nullcond")
    sd["quantize.embedding.weight"] = torch.zeros(4096, 12)
    with pytest.raises(CheckpointError, match="quantize.embedding.weight"):
        convert_flextok(sd, config=official_wiring(model.config))
    # a wider checkpoint than the wiring says
    other = FlexTok(FlexTokConfig(**{**TINY, "decoder_dim": 64}))
    with pytest.raises(CheckpointError, match="shape"):
        convert_flextok(official_state_dict(other), config=official_wiring(model.config),
                        vae_config=dict(model.config.vae))
    # the CLI prints one line, no traceback
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file({"x": torch.zeros(1)}, str(bad / "model.safetensors"))
    (bad / "config.json").write_text(json.dumps({"model": {"vq_model": {}}}))
    assert cli_main(["convert", "flextok", str(bad), "--out", str(tmp_path / "o")]) == 2


def test_vae_channels_must_match_the_tokenizer(model):
    with pytest.raises(ValueError, match="latent_channels"):
        FlexTok(FlexTokConfig(**{**TINY, "vae": dict(TINY_VAE_CONFIG, latent_channels=4)}))
    with pytest.raises(ValueError, match="latent_channels 4"):
        convert_flextok(official_state_dict(model), config=official_wiring(model.config),
                        vae_config=dict(model.config.vae, latent_channels=4))


def test_bad_config_values():
    with pytest.raises(ValueError, match="null_condition"):
        FlexTokConfig(**{**TINY, "null_condition": "random"}).validate()
    with pytest.raises(ValueError, match="multiple of head_dim"):
        FlexTokConfig(**{**TINY, "encoder_dim": 48}).validate()
    with pytest.raises(ValueError, match="unknown config key"):
        visualtok.create_model("flextok_tiny", registers=3)


def test_training_loss_decreases():
    torch.manual_seed(0)
    m = FlexTok(FlexTokConfig(**{**TINY, "zero_init": True})).train()
    x = torch.rand(4, 3, 32, 32)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):  # one fixed draw of noise, t, k and CFG drops: a deterministic objective
        loss = m.flow_loss(x, generator=torch.Generator().manual_seed(0))["flow"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(p.grad is None for p in m.vae.parameters())  # the VAE is frozen


class PatchTeacher(torch.nn.Module):
    """A fixed random conv net standing in for a frozen vision model: [B, 12, H/8, W/8]."""

    label = "test teacher (random conv)"

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 8, stride=8)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape,
                                               generator=torch.Generator().manual_seed(0)))

    def forward(self, images):
        return self.conv(images)


@pytest.fixture
def patch_teacher():
    """A teacher in the TEACHERS registry (as ReTok's tests plug theirs) for one test."""
    from visualtok.registry import TEACHERS, register_teacher

    register_teacher("test-patch")(lambda device: PatchTeacher())
    yield "test-patch"
    TEACHERS.remove("test-patch")


def test_repa_teacher_comes_from_the_teachers_registry(patch_teacher):
    from visualtok.train.flextok_task import FlexTokLossConfig, FlexTokTask

    with pytest.raises(ValueError, match="repa_teacher 'nope'.*test-patch"):
        FlexTokLossConfig(repa_teacher="nope")
    m = FlexTok(FlexTokConfig(**TINY)).train()
    task = FlexTokTask(m, FlexTokLossConfig(repa_weight=1.0, repa_teacher=patch_teacher,
                                            repa_layer=0), None)
    assert isinstance(task.teacher, PatchTeacher) and not task.teacher.training
    head = task.modules["model"].repa_head
    assert head[-1].weight.shape[0] == 12  # the teacher's width, found by a probe forward
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    batch = {"image": torch.rand(2, 3, 32, 32), "index": torch.arange(2)}
    cos = []
    for _ in range(15):  # the per-patch alignment is learnable: cosine rises
        torch.manual_seed(0)
        out = task.compute_loss("model", batch, 0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        cos.append(float(out.logs["loss/repa_cosine"]))
    assert cos[-1] > cos[0] + 0.1


def test_cached_latents_give_the_same_loss_and_follow_changed_images():
    from visualtok.train.flextok_task import FlexTokLossConfig, FlexTokTask

    m = FlexTok(FlexTokConfig(**TINY)).train()
    plain = FlexTokTask(m, FlexTokLossConfig(), None)
    cached = FlexTokTask(m, FlexTokLossConfig(cache_latents=True), None)
    x = torch.rand(3, 3, 32, 32)
    for images in (x, x, x.flip(-1)):  # fill, hit, then a changed (augmented) image set
        batch = {"image": images, "index": torch.tensor([4, 0, 7])}
        losses = []
        for task in (plain, cached):
            torch.manual_seed(1)
            losses.append(task.compute_loss("model", batch, 0).loss)
        assert torch.equal(losses[0], losses[1])  # the same posterior draws, cached or not
    assert sorted(k[0] for k in cached.latent_cache.items) == [0, 0, 4, 4, 7, 7]


def test_two_stage_training_through_the_shared_trainer(tmp_path, real_photos, patch_teacher):
    """Stage 1 trains the VAE; stage 2 FlexTok on it (frozen VAE, scaling factor calibrated,
    cached latents, REPA-style alignment to a registered frozen teacher)."""
    import yaml
    from _train_helpers import tiny_config, write_photos

    from visualtok.train.trainer import run_training

    data = write_photos(tmp_path / "photos", real_photos)
    over = dict(TINY, decoder_depth=1, vae=dict(TINY_VAE_CONFIG))
    runs = []
    for stage, model, loss in (
        ("flextok_vae", {"name": "flextok_tiny", "overrides": over},
         {"reconstruction": "l1"}),
        ("flextok", {"name": "flextok_tiny", "init_from": None},
         {"calibrate_scaling": True, "calibrate_batches": 1, "repa_weight": 0.5,
          "repa_teacher": patch_teacher, "repa_layer": 0, "cache_latents": True}),
    ):
        if runs:
            model["init_from"] = str(runs[-1] / "model")
        cfg = tiny_config(data, tmp_path / stage, task=stage)
        cfg["model"], cfg["loss"] = model, loss
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        runs.append(run_training(path))
    vae_stage, flow_stage = (visualtok.load(r / "model") for r in runs)
    assert flow_stage.config.vae_scaling_factor not in (None, 1.0)  # calibrated: 1/std
    sd1, sd2 = vae_stage.state_dict(), flow_stage.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1 if k.startswith("vae."))  # frozen
    assert not torch.equal(sd1["encoder.registers"], sd2["encoder.registers"])  # trained


def test_gpt_generates_a_prefix_that_flextok_decodes(model):
    from visualtok.generate.pipeline import generate_images

    gpt = visualtok.create_model("gpt_tiny", radices=(8, 8, 8, 5, 5, 5), layout_kind="fsq",
                                 num_tokens=8).eval()
    g = torch.Generator().manual_seed(0)
    codes = gpt.generate(torch.tensor([1, 2]), num_tokens=3, generator=g)
    assert codes.shape == (2, 3, 6)
    images = generate_images(gpt, model, labels=torch.tensor([1, 2]), num_tokens=3,
                             generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert torch.equal(images, model.decode(codes))  # same generator state -> same codes


def test_wiring_from_safetensors_metadata(model, tmp_path):
    """Released files also carry the wiring as metadata (str() of each top-level entry)."""
    d = tmp_path / "meta_only"
    d.mkdir()
    wiring = official_wiring(model.config)
    save_file({k: v.contiguous() for k, v in official_state_dict(model).items()},
              str(d / "model.safetensors"), metadata={k: str(v) for k, v in wiring.items()})
    converted = convert_flextok(d / "model.safetensors", vae_config=dict(model.config.vae))
    sd, sd2 = model.state_dict(), converted.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_pixel_loss_training_is_refused():
    m = FlexTok(FlexTokConfig(**TINY)).train()
    z_q = m.quantizer(m.encode_latents(torch.rand(1, 3, 32, 32))).z_q
    with pytest.raises(ValueError, match="task 'flextok'"):
        m.decode_latents(z_q)


def test_convert_wiring_variants(tmp_path):
    """Shared adaLN, zero null condition, no register positions, head without adaLN."""
    torch.manual_seed(1)
    cfg = FlexTokConfig(**{**TINY, "adaln_expansion": 1, "null_condition": "zero",
                           "register_posemb": False, "head_adaln": False})
    model = FlexTok(cfg).eval()
    w = official_wiring(cfg)
    dec = w["decoder"]["module_dict"]
    dec.pop("dec_registers_posemb_module")
    dec["dec_latent_dropout"] = {"_target_": P + "preprocessors.nullcond.ZeroNullCond",
                                 "read_write_key": "dec_registers", "dropout_prob": 0.2}
    dec["dec_seq_packer"]["per_subseq_embs"] = False
    dec["dec_transformer"]["adaLN_expansion"] = 1
    dec["dec_to_patches"].pop("adaLN_emb_read_key")
    sd = official_state_dict(model)
    converted = convert_flextok(sd, config=w, vae_config=dict(cfg.vae))
    c = converted.config
    assert (c.adaln_expansion, c.null_condition, c.register_posemb, c.head_adaln,
            c.cfg_dropout) == (1, "zero", False, False, 0.2)
    codes = model.encode(torch.rand(1, 3, 32, 32), num_tokens=4)
    assert torch.equal(converted.decode(codes, steps=2), model.decode(codes, steps=2))
    dec["dec_seq_packer"]["per_subseq_embs"] = True  # disagrees with adaLN_expansion 1
    with pytest.raises(ValueError, match="per_subseq_embs"):
        parse_wiring(w)


def test_flow_stage_resumes_exactly(tmp_path, real_photos):
    """Stage 2 with a calibrated scaling factor, cached latents and a pow2 nested dropout set by
    the stage: resuming from the step-2 checkpoint gives the same weights, bit for bit."""
    from _train_helpers import tiny_config, write_config, write_photos
    from safetensors.torch import load_file

    from visualtok.train import load_train_config
    from visualtok.train.trainer import Trainer

    data = write_photos(tmp_path / "photos", real_photos)

    def trainer(name, **extra):
        cfg = tiny_config(data, tmp_path / name, task="flextok",
                          trainer={"steps": 4, "ckpt_every": 2, **extra})
        cfg["model"] = {"name": "flextok_tiny", "overrides": dict(TINY, vae=dict(TINY_VAE_CONFIG))}
        cfg["loss"] = {"calibrate_scaling": True, "calibrate_batches": 1, "cache_latents": True,
                       "keep_sampling": "pow2"}
        return Trainer(load_train_config(write_config(tmp_path / f"{name}.yaml", cfg)))

    a = trainer("a")
    a.fit()
    assert a.task.model.config.keep_sampling == "pow2"
    b = trainer("b", resume=str(tmp_path / "a" / "checkpoints" / "step_00000002"))
    b.fit()
    assert b.history[0]["step"] == 3  # it did resume
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert json.loads((tmp_path / "b" / "model" / "config.json").read_text())["config"][
        "keep_sampling"] == "pow2"


def test_conditioning_diagnostic(model, tmp_path, real_photos):
    """eval/flextok_conditioning.py: flow loss per prefix length and code diversity. A decoder
    that cannot see its registers (adaLN-zero at init: zero output) scores every k alike."""
    import importlib.util

    from _train_helpers import write_photos

    path = Path(__file__).resolve().parent.parent / "eval" / "flextok_conditioning.py"
    spec = importlib.util.spec_from_file_location("eval_flextok_conditioning", path)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    photos = write_photos(tmp_path / "photos", real_photos[:3])
    res = diag.main([str(model.save_pretrained(tmp_path / "m")), str(photos), "--out",
                     str(tmp_path / "d")])
    assert [r["condition"] for r in res["rows"]] == ["null", "1", "2", "4", "8"]
    assert len(res["distinct_codes_per_register"]) == 8
    assert len({round(r["mean"], 6) for r in res["rows"]}) > 1  # random decoder: k matters
    torch.manual_seed(0)
    blind = FlexTok(FlexTokConfig(**{**TINY, "zero_init": True})).eval()
    res = diag.main([str(blind.save_pretrained(tmp_path / "b")), str(photos)])
    assert len({r["mean"] for r in res["rows"]}) == 1
    assert max(res["distinct_codes_per_register"]) == 1  # zero head: one code for every image
