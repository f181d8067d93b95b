"""Cosmos Predict2 text-to-image folders (diffkit.interop.cosmos2): text_to_image against diffusers' own
Cosmos2TextToImagePipeline on a tiny random folder (a 2-layer T5 of width 32 on a few-word unigram tokenizer, a
2-layer CosmosTransformer3DModel with its padding-mask channel and learnable positions (randomised: they start at
zero), a Wan 2.1 AutoencoderKLWan of z_dim 8 with non-trivial latents mean / std, a Karras FlowMatchEuler scheduler;
nothing downloaded). The pipeline refuses to run without a safety checker and cosmos_guardrail is not installed: the
reference gets a pass-through stand-in (diffusers' own tests do the same); without torchvision its transformer's
padding-mask resize is given a nearest-neighbour stand-in (the mask is zeros: any resize is exact)."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cosmos2 import check_cosmos2_folder, is_cosmos_folder, load_cosmos2, text_to_image  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_t5_encoder  # noqa: E402
from test_interop_sd3 import tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
H, W = 32, 48  # latents 8 x 4 x 6: 2 x 3 patches
LENGTH = 12  # T5 tokens


class PassThroughGuardrail:
    """The pipeline's safety checker, passing everything (diffusers' DummyCosmosSafetyChecker does the same)."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, frames):
        return frames


def _nearest_resize(x, size, interpolation=None):
    return torch.nn.functional.interpolate(x, size=size, mode="nearest")


def cosmos2_folder(root, pipeline_class, loader, **transformer):
    """(``pipeline_class.from_pretrained`` of a tiny random Cosmos Predict2 folder saved under ``root``, the folder,
    ``loader`` of it), the transformer's config updated by ``transformer``; yielded with the pipeline's padding-mask
    resize given a stand-in where torchvision is missing (test_cosmos2_video's folder too)."""
    from diffusers.models.transformers import transformer_cosmos
    torch.manual_seed(0)
    transformer = diffusers.CosmosTransformer3DModel(**{
        "in_channels": 8, "out_channels": 8, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2,
        "mlp_ratio": 2, "text_embed_dim": 32, "adaln_lora_dim": 4, "max_size": (4, 96, 96), "patch_size": (1, 2, 2),
        "rope_scale": (1.0, 4.0, 4.0), "concat_padding_mask": True, "extra_pos_embed_type": "learnable",
        **transformer})
    with torch.no_grad():
        for parameter in transformer.parameters():
            if not bool(parameter.abs().max() > 0):  # the learnable positions start at zero
                parameter.normal_(0.0, 0.5)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.3 for i in range(8)], latents_std=[1 + 0.1 * i for i in range(8)])
    pipe = pipeline_class(
        text_encoder=tiny_t5_encoder(), tokenizer=tiny_t5_tokenizer(), transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=PassThroughGuardrail())
    pipe.register_modules(safety_checker=None)  # saved as [null, null]
    pipe.save_pretrained(root)
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(transformer_cosmos, "transforms"):  # no torchvision
            patch.setattr(transformer_cosmos, "transforms", types.SimpleNamespace(
                functional=types.SimpleNamespace(resize=_nearest_resize),
                InterpolationMode=types.SimpleNamespace(NEAREST="nearest")), raising=False)
        yield reloaded(root, pipeline_class, loader, safety_checker=PassThroughGuardrail())


@pytest.fixture(scope="module")
def tiny_cosmos2(tmp_path_factory):
    """(Cosmos2TextToImagePipeline.from_pretrained of the saved folder, the folder, load_cosmos2 of it)."""
    yield from cosmos2_folder(tmp_path_factory.mktemp("cosmos2") / "cosmos2", diffusers.Cosmos2TextToImagePipeline,
                              load_cosmos2)


def _latents(seed=7):
    return torch.randn(2, 8, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_cosmos2_encodes_prompts_and_places_the_sigmas_as_the_pipeline(tiny_cosmos2):
    """The T5 states zeroed past each prompt's tokens (prompt and negative prompt), and the grid's VP times at the
    pipeline's Karras sigmas 80 .. 0.002 (its last, repeated sigma dropped); the padding channel moved into diffkit's
    net."""
    pipe, folder, model = tiny_cosmos2
    assert is_cosmos_folder(folder) and model.padding and not model.transformer.config.concat_padding_mask
    assert model.latent_shape(2, H, W) == (2, 8, 4, 6) and model.latent_shape(1)[2:] == (96, 170)
    ours = model.encode_prompts(PROMPTS, LENGTH)
    theirs, negative = pipe.encode_prompt(PROMPTS, ["ugly", "blurry dog"], max_sequence_length=LENGTH, device="cpu")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)  # (measured 5e-7: float round-off)
    torch.testing.assert_close(model.encode_prompts(["ugly", "blurry dog"], LENGTH), negative, rtol=0, atol=1e-6)
    assert bool((ours[1, 3:] == 0).all()) and not bool((ours[1, 2] == 0).all())  # "hot dog </s>", then zeros
    for steps in (2, 5):
        pipe.scheduler.set_timesteps(sigmas=torch.linspace(0, 1, steps, dtype=torch.float64).numpy())
        sigmas = model.denoiser.schedule.karras_sigma(model.scheduler_grid(steps))
        assert len(sigmas) == steps and abs(float(sigmas[0]) - 80) < 1e-4 and abs(float(sigmas[-1]) - 0.002) < 1e-8
        torch.testing.assert_close(sigmas, pipe.scheduler.sigmas[:-1].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps, kw", [
    (3, {"guidance_scale": 3.0, "negative_prompt": ["ugly", "blurry dog"]}),  # CFG g = 3, one negative per prompt
    (4, {}),  # the default g = 7 against the pipeline's long default negative prompt
    (3, {"guidance_scale": 1.0})])  # g <= 1: unguided
def test_cosmos2_matches_the_pipeline(tiny_cosmos2, steps, kw):
    """Same latents as Cosmos2TextToImagePipeline from the same eps: the flow Denoiser on EDM's schedule, DDIM on the
    Karras sigmas (N - 1 network calls), the VE state at sigma_min; the pipeline's g as the seed convention's w."""
    pipe, _, model = tiny_cosmos2
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=H, width=W, num_inference_steps=steps, latents=latents[:, :, None],
                      max_sequence_length=LENGTH, output_type="latent", **kw).images
    guidance = {} if "guidance_scale" not in kw else {
        "guidance_scale": kw["guidance_scale"] if kw["guidance_scale"] > 1 else 0.0, "convention": "seed"}
    model.denoiser.reset_nfe()
    ours = text_to_image(model, PROMPTS, steps=steps, latents=latents, max_sequence_length=LENGTH,
                         return_latents=True, negative_prompt=kw.get("negative_prompt"), **guidance)
    assert model.denoiser.nfe == steps - 1
    error = relative_error(ours, theirs)
    print("cosmos2", steps, kw, float((ours - theirs).abs().max()), error)
    assert ours.shape == theirs.shape == (2, 8, 4, 6) and error < 1e-5, error


def test_cosmos2_returns_the_ve_latent_at_the_last_sigma(tiny_cosmos2, monkeypatch):
    """With sigma_min raised to 0.5 on both sides (the pipeline's scheduler config, diffkit's copy of what the
    pipeline registers), the loop ends at sigma 0.5, where the VP state is the VE latent times alpha = 1 / sqrt(1.25):
    diffkit returns the VE latent the pipeline decodes."""
    from diffkit.interop import cosmos2
    pipe, _, model = tiny_cosmos2
    monkeypatch.setitem(cosmos2.PIPELINE_SCHEDULER, "sigma_min", 0.5)
    monkeypatch.setattr(pipe, "scheduler", diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        {**pipe.scheduler.config, "sigma_min": 0.5}))
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=H, width=W, num_inference_steps=3, latents=latents[:, :, None],
                      max_sequence_length=LENGTH, output_type="latent", guidance_scale=1.0).images
    ours = text_to_image(model, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                         guidance_scale=0.0, convention="seed")
    assert abs(float(model.denoiser.schedule.karras_sigma(model.scheduler_grid(3))[-1]) - 0.5) < 1e-6
    print("cosmos2 sigma_min 0.5", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5


def test_sample_command_runs_a_cosmos2_folder(tiny_cosmos2, tmp_path, capsys):
    """`diffkit sample` writes text_to_image's images byte for byte (sample i's eps from seed + i; the Wan VAE on one
    frame); the pipeline's images (which its safety-checker path truncates to 8 bits) are ours truncated the same
    way; UniPC on its own grid of the EDM schedule nears the pipeline's 12-step latents."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    pipe, folder, model = tiny_cosmos2
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--height", str(H), "--width", str(W), "--out", str(out), "--negative-prompt",
                 "ugly", "--guidance-scale", "4", "--guidance-convention", "diffusers", "--steps", "3", "--seed", "5",
                 "--max-sequence-length", str(LENGTH), "--no-progress"]) == 0
    kw = {"negative_prompt": "ugly", "max_sequence_length": LENGTH}
    ours = text_to_image(model, PROMPTS, steps=3, seed=5, height=H, width=W, output_range="-1,1",
                         guidance_scale=4.0, **kw)
    save_grid(ours, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=H, width=W, num_inference_steps=3, output_type="pt", guidance_scale=3.0,
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    truncated = torch.floor((ours / 2 + 0.5).clamp(0, 1) * 255) / 255
    assert theirs.shape == truncated.shape == (2, 3, H, W)
    levels = float((truncated - theirs).abs().max()) * 255
    same = float((truncated == theirs).float().mean())
    with torch.no_grad():
        reference = pipe(PROMPTS, height=H, width=W, num_inference_steps=12, latents=_latents()[:, :, None],
                         max_sequence_length=LENGTH, output_type="latent").images
    unipc = relative_error(text_to_image(model, PROMPTS, sampler="unipc", steps=6, latents=_latents(),
                                         max_sequence_length=LENGTH, return_latents=True), reference)
    with capsys.disabled():
        print("cosmos2 images: 8-bit levels off", levels, "equal", same, "unipc 6 vs 12 steps", unipc)
    assert levels <= 1 and same > 0.99 and unipc < 0.05
    capsys.readouterr()


def test_what_cosmos2_does_not_take_is_refused_in_one_line(tiny_cosmos2, tmp_path, capsys):
    """diffkit edit, --lora, sizes off 16, one step, a scale the pipeline cannot draw, --flow-shift (the pipeline's
    loop; another sampler: EDM's schedule is no flow schedule), sizes past max_size, --prompt-2, a negative prompt
    unguided, every other Cosmos pipeline, other channels or patches, a Wan 2.2 VAE, a scheduler without Karras
    sigmas or with dynamic shifting: one line each, before any file is written (most before any weight is read:
    max_size and --flow-shift with another sampler once the folder is loaded); a folder naming Cosmos
    Guardrail as its safety checker loads (it is not loaded)."""
    from diffkit.cli import main
    _, folder, model = tiny_cosmos2
    base = ["--checkpoint", str(folder), "--prompt", "cat", "--out", str(tmp_path / "x.png"), "--no-progress"]
    for argv, message in (
            (["edit", "--images", str(tmp_path), *base], "no Cosmos Predict2 image-to-image pipeline"),
            (["sample", *base, "--lora", "x.safetensors"], "--lora does not apply to a Cosmos Predict2 folder"),
            (["sample", *base, "--height", "24"], "multiple of 16 (Cosmos2TextToImagePipeline's check_inputs"),
            (["sample", *base, "--steps", "1"], "steps=1 is not allowed for Cosmos2TextToImagePipeline's loop"),
            (["sample", *base, "--guidance-scale", "1.5"], "w = 0.5) is not allowed on a Cosmos Predict2 folder"),
            (["sample", *base, "--flow-shift", "3"], "--flow-shift 3 moves a sampler's own grid"),
            (["sample", *base, "--prompt-2", "dog"], "--prompt-2 does not apply to a Cosmos Predict2 folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()
    for part, change, message in (
            ("model_index.json", {"_class_name": "Cosmos2VideoToWorldPipeline"}, "which diffkit does not drive"),
            ("model_index.json", {"_class_name": "Cosmos2_5_PredictBasePipeline"}, "allowed: Cosmos2TextToImage"),
            ("model_index.json", {"_class_name": "Cosmos3OmniPipeline", "transformer": ["diffusers", "X"]},
             "'Cosmos3OmniPipeline' folder"),
            ("transformer/config.json", {"in_channels": 16}, "in_channels=16; allowed: 8"),
            ("transformer/config.json", {"patch_size": [1, 1, 1]}, "patch_size=[1, 1, 1]; allowed: [1, 2, 2]"),
            ("vae/config.json", {"patch_size": 2, "scale_factor_spatial": 16}, "patch_size=2; allowed: None")):
        bad = changed_folder(folder, tmp_path, part, change)
        assert is_cosmos_folder(bad)
        with pytest.raises(DiffkitError, match=re.escape(message)) as info:
            load_cosmos2(bad, progress=False)
        assert "\n" not in str(info.value)
    guarded = changed_folder(folder, tmp_path, "model_index.json",
                              {"safety_checker": ["cosmos_guardrail", "CosmosSafetyChecker"]})
    assert check_cosmos2_folder(guarded)[0]["safety_checker"][0] == "cosmos_guardrail"
    config = dict(model.scheduler_config)
    for change, message in (({"use_karras_sigmas": False}, "not positive and strictly falling"),
                            ({"use_dynamic_shifting": True}, "cannot take Cosmos2TextToImagePipeline's set_timesteps"),
                            ({"stochastic_sampling": True}, "stochastic_sampling=True")):
        model.scheduler_config = {**config, **change}
        try:
            with pytest.raises(DiffkitError, match=re.escape(message)):
                text_to_image(model, "cat", steps=3, return_latents=True)
        finally:
            model.scheduler_config = config
    for kw, message in (({"max_sequence_length": 513}, "allowed: 1..512"),
                        ({"ip_adapter": object()}, "has no load_ip_adapter"),
                        ({"guidance_scale": 0.0, "convention": "seed", "negative_prompt": "x"}, "needs guidance"),
                        ({"height": 40}, "multiples of 16"),
                        ({"height": 1552}, "at most 1536x1536 (the transformer's max_size [4, 96, 96]"),
                        ({"sampler": "unipc", "flow_shift": 3.0}, "a Cosmos Predict2 folder samples on EDM's Karras")):
        with pytest.raises(DiffkitError, match=re.escape(message)):
            text_to_image(model, "cat", steps=2, return_latents=True, **kw)
