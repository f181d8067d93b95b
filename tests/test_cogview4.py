"""CogView4 folders (diffkit.interop.cogview4): diffkit's text_to_image against diffusers' own CogView4Pipeline on a
tiny random folder (a 2-layer GlmModel with the word-level Gemma tokenizer of tests/_sana_helpers.py, a 1-layer
CogView4Transformer2DModel, the tiny VAE of tests/_pixart_helpers.py, CogView4's released scheduler config; nothing
downloaded), and ``diffkit sample`` on it (the library's grid byte for byte; what does not apply refused in one
line)."""
import math

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cogview4 import (cogview4_mu, cogview4_timestep, is_cogview4_folder, load_cogview4,  # noqa: E402
                                      text_to_image)

from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
LONG = "a photo of cat hot dog ugly blurry the user prompt"  # 20 tokens: left-padded to 32
# CogView4-6B's scheduler/scheduler_config.json (its linear, resolution-dependent shift)
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.25, max_image_seq_len=4096, max_shift=0.75, shift=1.0,
                 time_shift_type="linear", use_dynamic_shifting=True)


def tiny_cogview4_folder(tmp_path_factory, cls, in_channels=4):
    """(pipeline loaded from the folder, folder, CogView4) of a tiny random ``cls`` (CogView4Pipeline, or
    CogView4ControlPipeline with ``in_channels`` 8): GLM of 2 layers (hidden 32), a 1-layer transformer (2 heads of
    8, patch 2, sample_size 8), the VAE of tests/_pixart_helpers.py (f = 2, 4 channels)."""
    from _pixart_helpers import tiny_pixart_pipeline
    from _sana_helpers import tiny_gemma_tokenizer
    tokenizer = tiny_gemma_tokenizer()  # left padding, as GLM-4's
    torch.manual_seed(0)
    glm = transformers.GlmModel(transformers.GlmConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256, pad_token_id=0)).eval()
    transformer = diffusers.CogView4Transformer2DModel(
        patch_size=2, in_channels=in_channels, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, condition_dim=4, sample_size=8,
        rope_axes_dim=(4, 4))
    pipe = cls(tokenizer=tokenizer, text_encoder=glm, vae=tiny_pixart_pipeline().vae, transformer=transformer,
               scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULER))
    path = tmp_path_factory.mktemp("cogview4") / cls.__name__
    pipe.save_pretrained(path)
    return reloaded(path, cls, load_cogview4)


@pytest.fixture(scope="session")
def cogview4_folder(tmp_path_factory):
    """A tiny random CogView4Pipeline folder (:func:`tiny_cogview4_folder`), built on first use."""
    return tiny_cogview4_folder(tmp_path_factory, diffusers.CogView4Pipeline)


@pytest.fixture(scope="session")
def cogview4_control_folder(tmp_path_factory):
    """A tiny random CogView4ControlPipeline folder (transformer in_channels 2 C), built on first use."""
    return tiny_cogview4_folder(tmp_path_factory, diffusers.CogView4ControlPipeline, in_channels=8)


def _both(pipe, cogview, prompts=PROMPTS, steps=3, size=(16, 32), **call):
    """(diffkit's z_0, the pipeline's) from the same latents."""
    noise = torch.randn(len(prompts), 4, size[0] // 2, size[1] // 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(prompts, num_inference_steps=steps, latents=noise.clone(), output_type="latent",
                      height=size[0], width=size[1], **call).images
    ours = text_to_image(cogview, prompts, steps=steps, latents=noise, return_latents=True, height=size[0],
                         width=size[1], **call)
    assert (theirs - noise).abs().max() > 0.5
    return ours, theirs


@pytest.mark.parametrize("prompts,call", [
    (PROMPTS, dict(negative_prompt="ugly blurry")),
    ([LONG, "hot dog"], dict(guidance_scale=3.0, size=(32, 16), steps=4)),  # 32 tokens against the negative's 16
    (PROMPTS, dict(guidance_scale=1.0, steps=2, size=(16, 16))),  # unguided: one call
    (PROMPTS, dict(original_size=(64, 48), crops_coords_top_left=(8, 4), max_sequence_length=5))])
def test_cogview4_matches_the_pipeline(cogview4_folder, prompts, call):
    """z_0 from the same z equals CogView4Pipeline's: CFG against a negative prompt of the same or another token
    length, s = 1, the size conditions and a truncating max_sequence_length."""
    pipe, path, cogview = cogview4_folder
    ours, theirs = _both(pipe, cogview, prompts, **call)
    assert relative_error(ours, theirs) < 1e-5  # measured: see docs/interop.md


@pytest.mark.parametrize("scheduler", [dict(shift=3.0), dict(SCHEDULER, time_shift_type="exponential")])
def test_other_shifts_match_the_pipeline(cogview4_folder, scheduler):
    """A fixed-shift scheduler (the pipeline's mu unused) and an exponential time shift (e^mu): the grid, and the
    transformer's time unshifted by that shift."""
    import dataclasses
    pipe, _, cogview = cogview4_folder
    saved = pipe.scheduler
    try:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**scheduler)
        config = dict(pipe.scheduler.config, _class_name="FlowMatchEulerDiscreteScheduler")
        other = dataclasses.replace(cogview, scheduler_config=config, latents_hw=None, _denoiser=None, _whole=None,
                                    _sized={})
        ours, theirs = _both(pipe, other, steps=4, negative_prompt="ugly")
        assert relative_error(ours, theirs) < 1e-5
    finally:
        pipe.scheduler = saved


def test_prompts_grid_and_images_are_the_pipelines(cogview4_folder):
    """GLM's states (left-padded to 16k tokens, second-to-last layer), the scheduler's sigmas at a size, the shift
    (CogView4's mu, the inverse shift as closed forms) and the decoded images."""
    pipe, path, cogview = cogview4_folder
    assert is_cogview4_folder(path) and cogview.latent_shape(1) == (1, 4, 8, 8)
    theirs = pipe.encode_prompt([LONG, "hot"], negative_prompt="ugly")
    context, mask = cogview.encode_prompts([LONG, "hot"])
    assert context.shape[1] == 32 and torch.equal(context, theirs[0]) and mask.all()
    assert torch.equal(cogview.encode_prompts(["ugly"] * 2)[0], theirs[1])
    sized = cogview.at_size(16, 8)
    mu = diffusers.pipelines.cogview4.pipeline_cogview4.calculate_shift(32, 256, 0.25, 0.75)
    assert cogview4_mu(32, SCHEDULER) == mu and sized.shift(16, 8) == mu
    timesteps = np.linspace(1000, 1, 5).astype(np.int64).astype(np.float32)
    pipe.scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / 1000, mu=mu)
    assert torch.equal(sized.scheduler_sigmas(5), pipe.scheduler.sigmas)
    s = pipe.scheduler.sigmas[:-1].double()
    assert torch.allclose(cogview4_timestep(s * 1000, 1000, mu), torch.from_numpy(timesteps).double(), atol=1e-3)
    half = torch.tensor(500.0, dtype=torch.float64)
    assert math.isclose(float(cogview4_timestep(half, 1000, 3.0)), 250.0)  # T s / (3 - 2 s) at s = 1/2
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    times = {}  # the transformer's timesteps: the pipeline's whole t_i, exactly

    def record(name):
        return lambda module, args, kwargs: times.setdefault(name, []).append(kwargs["timestep"].tolist())
    hooks = [model.register_forward_pre_hook(record(name), with_kwargs=True)
             for name, model in (("theirs", pipe.transformer), ("ours", cogview.transformer))]
    try:
        with torch.no_grad():
            expected = pipe("hot dog", num_inference_steps=7, latents=noise.clone(), height=16, width=16,
                            output_type="pt").images
        images = text_to_image(cogview, "hot dog", steps=7, latents=noise, height=16, width=16)
    finally:
        for hook in hooks:
            hook.remove()
    flat = {name: sum(calls, []) for name, calls in times.items()}  # ours: CFG as one call of the doubled batch
    whole = np.linspace(1000, 1, 7).astype(np.int64).astype(float).repeat(2).tolist()  # unrounded: 499.99997
    assert flat["ours"] == flat["theirs"] == whole
    assert relative_error(images, expected) < 1e-5


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(cogview4_folder, tmp_path, capsys):
    from _sana_helpers import check_sample_command
    from diffkit.cli import main
    _, path, cogview = cogview4_folder
    check_sample_command(path, cogview, text_to_image, tmp_path, capsys, PROMPTS, (16, 32), [
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a CogView4"),
        (["--flow-shift", "2"], "--flow-shift does not apply to a CogView4 folder"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a CogView4 folder"),
        (["--cfg-trunc-ratio", "0.5"], "--cfg-trunc-ratio applies to a Lumina-Image 2.0 folder"),
        (["--height", "24"], "--height 24 is not allowed; give a positive multiple of 16")])
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot",
                 "--out", str(tmp_path / "never")]) == 2
    assert "is a CogView4 folder, which diffkit edit does not take" in capsys.readouterr().err


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"_class_name": "CogView3PlusPipeline"}, "'CogView3PlusPipeline' folder, which"),
    ("model_index.json", {"_class_name": "CogView4ControlPipeline"}, "in_channels, out_channels = 4, 4; allowed: 8"),
    ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "text_encoder is a 'T5EncoderModel'"),
    ("transformer/config.json", {"in_channels": 8}, "in_channels, out_channels = 8, 4; allowed"),
    ("scheduler/scheduler_config.json", {"use_karras_sigmas": True}, "use_karras_sigmas=True, whose sigmas"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True")])
def test_folders_diffkit_does_not_drive_are_refused(cogview4_folder, tmp_path, file, change, expected):
    from _sana_helpers import changed_copy
    with pytest.raises(DiffkitError, match=expected) as info:
        load_cogview4(changed_copy(cogview4_folder[1], tmp_path, file, change), progress=False)
    assert "\n" not in str(info.value)


def test_bad_options_are_one_line_errors(cogview4_folder):
    cogview = cogview4_folder[2]
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(max_sequence_length=0), "max_sequence_length=0 is not allowed; allowed: 1..1024"),
        (dict(height=24), "height x width 24x16 is not allowed; give positive multiples of 16"),
        (dict(original_size=(16,)), r"original_size=\(16,\) is not allowed; give two finite numbers"),
        (dict(resolution_binning=True), "CogView4Pipeline has no resolution binning")]:
        with pytest.raises(DiffkitError, match=expected) as info:
            text_to_image(cogview, "hot", steps=1, **{"height": 16, "width": 16, **call})
        assert "\n" not in str(info.value)


def test_cogview4_control_matches_the_pipeline(cogview4_control_folder, monkeypatch):
    """CogView4ControlPipeline: the control image (24 x 40, resized to 16 x 32) encoded, its posterior draw (the
    pipeline's from torch's global generator seeded 0, diffkit's from control_seed 0), concatenated after z; two
    prompts against the posterior mean (both sides patched to it)."""
    from PIL import Image
    pipe, _, cogview = cogview4_control_folder
    assert cogview.control and cogview.latent_shape(1) == (1, 4, 8, 8)
    image = Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype(np.uint8))
    torch.manual_seed(0)  # the pipeline's latent_dist.sample(); diffkit's control_seed defaults to 0
    ours, theirs = _both(pipe, cogview, ["hot dog"], control_image=image, negative_prompt="ugly")
    other = text_to_image(cogview, "hot dog", control_image=image, control_seed=1, negative_prompt="ugly", steps=3,
                          latents=torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(1)), height=16,
                          width=32, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5 < relative_error(other, theirs)  # the draw matters
    dist = diffusers.models.autoencoders.vae.DiagonalGaussianDistribution
    monkeypatch.setattr(dist, "sample", lambda self, generator=None: self.mean)
    ours, theirs = _both(pipe, cogview, PROMPTS, control_image=image, guidance_scale=3.0)
    assert relative_error(ours, theirs) > 1e-5  # diffkit draws unless told
    ours = text_to_image(cogview, PROMPTS, control_image=image, control_posterior="mean", guidance_scale=3.0,
                         steps=3, latents=torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(1)),
                         height=16, width=32, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5


def test_control_sample_command_is_the_library(cogview4_control_folder, cogview4_folder, tmp_path, capsys):
    """``diffkit sample --control-image`` on a Control folder writes the library's grid byte for byte; without it,
    or on a plain CogView4 folder: one line."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    _, path, cogview = cogview4_control_folder
    image = tmp_path / "control.png"
    Image.fromarray((np.random.RandomState(0).rand(24, 40, 3) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", "hot dog", "--num", "2", "--steps", "2", "--seed",
                 "3", "--height", "16", "--width", "32", "--control-image", str(image), "--out", str(out),
                 "--no-progress"]) == 0
    images = text_to_image(cogview, ["hot dog"] * 2, control_image=str(image), control_seed=3, steps=2, seed=3,
                           height=16, width=32, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    for folder, extra, expected in [(path, [], "is a CogView4 Control folder (CogView4ControlPipeline: latents"),
                                    (cogview4_folder[1], ["--control-image", str(image)], "needs --controlnet DIR")]:
        capsys.readouterr()
        assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--out", str(tmp_path / "never.png"),
                     "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never.png").exists()
    for model, call, expected in [(cogview, {}, "give control_image"),
                                  (cogview4_folder[2], {"control_image": str(image)}, "has none")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, height=16, width=16, **call)


COGVIEW4_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out"],
                     rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_cogview4_lora_is_load_lora_weights_and_fuse_lora(cogview4_folder, cogview4_control_folder, tmp_path, capsys):
    """A diffusers-format file (CogView4Pipeline.save_lora_weights) at 0.3: load_lora_weights + fuse_lora's weights
    and z_0; ``diffkit sample --lora`` is the library; a kohya key, or a Control folder (no LoRA loader): one line."""
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    _, path, cogview = cogview4_folder
    lora, pipe = fused_transformer_lora(diffusers.CogView4Pipeline, path, tmp_path, COGVIEW4_LORA, scale=0.3)
    ours = load_cogview4(path, progress=False, lora=[(lora, 0.3)])
    z0, expected = _both(pipe, ours, negative_prompt="ugly")
    assert relative_error(z0, expected) < 1e-5  # measured: see docs/interop.md
    assert check_transformer_lora(path, lora, 0.3, ours, cogview, pipe, text_to_image, tmp_path, capsys,
                                  "lora_unet_transformer_blocks_0_attn1_to_q.lora_down.weight",
                                  "a CogView4 folder") < 1e-6
    with pytest.raises(DiffkitError, match="CogView4ControlPipeline has no LoRA loader"):
        load_cogview4(cogview4_control_folder[1], progress=False, lora=[lora])


def test_size_condition_flags_are_the_pipelines(cogview4_folder, tmp_path, capsys):
    """``--original-size`` / ``--crops-coords-top-left``: ``diffkit sample`` writes the library's image with
    CogView4Pipeline's original_size / crops_coords_top_left (which match the pipeline,
    :func:`test_cogview4_matches_the_pipeline`); ``--target-size`` (the pipeline's is the drawn size) and the flags on
    another folder kind (PixArt): one line."""
    from _pixart_helpers import assert_sample_refusals, edited_copy
    from _sana_helpers import check_option_flags
    from diffkit.cli import main
    _, path, cogview = cogview4_folder
    check_option_flags(path, cogview, text_to_image, tmp_path, 2, 16, ["--original-size", "64,48",
                       "--crops-coords-top-left", "8,4"], {"original_size": (64, 48), "crops_coords_top_left": (8, 4)})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--target-size", "16,16"], "--target-size does not apply to a CogView4 folder"),
        (["--original-size", "64,48", "--target-size", "16,16"], "target size is the drawn one")])
    other = edited_copy(path, tmp_path / "copy", "model_index.json", {"_class_name": "PixArtSigmaPipeline"})
    assert_sample_refusals(main, other, tmp_path, capsys, [(["--sampler", "ddim", "--crops-coords-top-left", "8,4"],
                                                            "--crops-coords-top-left applies to a HunyuanDiT, "
                                                            "CogView4, CogView3-Plus, SD-XL or Kolors folder")])
