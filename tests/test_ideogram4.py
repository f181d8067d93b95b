"""Ideogram 4 folders (diffkit.interop.ideogram4): text_to_image against diffusers' own Ideogram4Pipeline on a tiny
random folder (tests/_ideogram4_helpers.py; nothing downloaded; two different random transformers), ``diffkit
sample`` on it (the library's PNG byte for byte) and the one-line refusals; LoRA files (diffkit.interop.ideogram4_lora)
against its ``load_lora_weights`` + ``fuse_lora``."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux2 import is_flux2_folder  # noqa: E402
from diffkit.interop.ideogram4 import (check_ideogram4_folder, is_ideogram4_folder, latents_from_tokens,  # noqa: E402
                                       load_ideogram4, text_to_image, tokens_from_latents)

from _ideogram4_helpers import tiny_ideogram4_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of cat", "hot dog"]  # 28 and 21 tokens with the template: rows of two lengths
SIZE = 32  # pixels: latents 16 x 8 x 8 (VAE factor 2, 2 x 2 patches)
LENGTH = 40  # the pipeline's max_sequence_length here (its left padding: 12 and 19 tokens)


@pytest.fixture(scope="session")
def tiny_ideogram4(tmp_path_factory):
    """(Ideogram4Pipeline.from_pretrained of the saved folder, the folder, load_ideogram4 of it)."""
    path = tmp_path_factory.mktemp("ideogram4") / "ideogram4"
    tiny_ideogram4_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.Ideogram4Pipeline, load_ideogram4)


def _theirs(pipe, tokens, steps, **call):
    call = {"guidance_schedule": None, "output_type": "latent", **call}
    with torch.no_grad():
        return pipe(prompt=PROMPTS, num_inference_steps=steps, latents=tokens.clone(), height=SIZE, width=SIZE,
                    max_sequence_length=LENGTH, **call).images


def test_ideogram4_samples_as_the_pipeline(tiny_ideogram4):
    """The stacked, interleaved Qwen3-VL layer outputs (each prompt alone; the pipeline's left padding trimmed); the
    conditional and unconditional transformers blended per step (a schedule with a 1.5 and a 3.0, one scale, s = 1:
    the conditional call alone); the logit-normal sigmas (resolution mu, another mu / std) after the scheduler's
    fixed shift; z from the pipeline's token draw (the flow state at its first sigma < 1); the final latents and the
    decoded images (patch-major patches, batch-norm statistics)."""
    pipe, path, model = tiny_ideogram4
    assert is_ideogram4_folder(path) and not is_flux2_folder(path) and model.latent_shape(1) == (1, 16, 512, 512)
    theirs, _, _, _ = pipe.encode_prompt(PROMPTS, 8, 8, LENGTH, "cpu")
    ours = model.text_cond(PROMPTS)
    assert ours["lens"].tolist() == [28, 21] and not theirs[:, :LENGTH - 28].any()
    print("Ideogram4Pipeline prompt states", relative_error(ours["context"], theirs[:, LENGTH - 28:LENGTH]))
    assert relative_error(ours["context"], theirs[:, LENGTH - 28:LENGTH]) < 1e-5
    tokens = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1))
    z = latents_from_tokens(tokens, 8, 8)
    results = []
    schedule = {"guidance_schedule": [5.0, 4.0, 1.5, 3.0]}
    for steps, ours, call in [(4, schedule, schedule), (3, {"guidance_scale": 2.5, "mu": 0.5, "std": 1.0},
                                                        {"guidance_scale": 2.5, "mu": 0.5, "std": 1.0,
                                                         "output_type": "pt"}),
                              (3, {"guidance_scale": 1.0}, {"guidance_scale": 1.0})]:
        last = {}  # the pipeline's final latents, from its step callback (output_type="pt": its images too)
        images = _theirs(pipe, tokens, steps, callback_on_step_end=lambda p, i, t, kw: last.update(kw) or kw, **call)
        results.append(text_to_image(model, PROMPTS, steps=steps, latents=z, return_latents=True, **ours))
        error = relative_error(tokens_from_latents(results[-1]), last["latents"])
        print("Ideogram4Pipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop/ideogram4.md
        if call.get("output_type") == "pt":
            ours = (model.decode(results[-1]) / 2 + 0.5).clamp(0, 1)  # text_to_image's images of z_0
            print("Ideogram4Pipeline images", relative_error(ours, images))
            assert relative_error(ours, images) < 1e-5
    assert relative_error(results[1], results[2]) > 1e-2  # the unconditional transformer shows
    seeded = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, return_latents=True,
                           sampler="unipc", guidance_scale=3.0, convention="seed")  # s = 4 on its own grid
    assert seeded.shape == z.shape and bool(torch.isfinite(seeded).all())


def test_ideogram4_default_schedule_is_the_pipelines_by_noise_level(tiny_ideogram4):
    """The default scales (7.0, then 3.0 for the last 3 steps: the pipeline's at 48) and a schedule placed on the
    pipeline's sigmas, read by noise level: at each grid time of the pipeline's loop its own step's scale, between
    them the scale of the step that covers it."""
    from diffkit.interop.ideogram4 import Ideogram4Guidance, default_schedule
    from diffusers.pipelines.ideogram4.pipeline_ideogram4 import _logit_normal_sigmas, _resolution_aware_mu
    _, _, model = tiny_ideogram4
    assert default_schedule(48) == [7.0] * 45 + [3.0] * 3 and default_schedule(2) == [3.0, 3.0]
    sigmas = model.scheduler_sigmas(48, 512, 512, 0.5, 1.2)  # 2048 x 2048 pixels
    pipe_sigmas = _logit_normal_sigmas(48, _resolution_aware_mu(2048, 2048, 0.5), 1.2)
    expected = diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0)
    expected.set_timesteps(sigmas=pipe_sigmas.tolist())
    assert torch.equal(sigmas, expected.sigmas)
    denoiser, _ = model.prompt_guidance(["a"], 4, 4, 6, guidance_schedule=[6, 5, 4, 3, 2, 1.5])
    assert isinstance(denoiser, Ideogram4Guidance)
    grid = model.scheduler_grid(6, 4, 4)
    at = denoiser.scale_at(grid[:6].float(), 6).tolist()
    between = denoiser.scale_at((grid[:6] + grid[1:]) / 2, 6).tolist()
    assert at == between == [6, 5, 4, 3, 2, 1.5]


def test_ideogram4_sample_command_is_the_library(tiny_ideogram4, tmp_path, capsys):
    """``diffkit sample`` on an Ideogram 4 folder writes the library's PNG byte for byte (one guidance scale in the
    seed convention, --max-sequence-length, the pipeline's sigmas; --guidance-schedule, and the batch-size probe's
    one step given one of its scales)."""
    from diffkit.images import save_grid
    _, path, model = tiny_ideogram4
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", str(SIZE), "--width",
                 str(SIZE), "--guidance-scale", "2", "--guidance-convention", "seed", "--max-sequence-length", "30",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, guidance_scale=2.0,
                           convention="seed", output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert "Ideogram 4 folder" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "5", "--height", str(SIZE), "--width", str(SIZE), "--guidance-schedule", "5,1.5", "--out",
                 str(tmp_path / "schedule.png"), "--no-progress"]) == 0
    images = text_to_image(model, PROMPTS[:1], steps=2, seed=5, height=SIZE, width=SIZE,
                           guidance_schedule=[5, 1.5], output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert (tmp_path / "schedule.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    from diffkit.commands._family_options import check_schedule_length, probe_guidance
    schedule = {"guidance_scale": None, "guidance_schedule": [1.0, 5.0]}
    assert probe_guidance(schedule, 1, True)["guidance_schedule"] == [5.0]  # the probe: both transformers
    assert probe_guidance(schedule, 2, True) is schedule and probe_guidance(schedule, 1, False) is schedule
    with pytest.raises(DiffkitError, match="--guidance-schedule has 2 scales for 48 steps; give one per step"):
        check_schedule_length(schedule, True, 48)
    check_schedule_length(schedule, False, 48)  # (another sampler reads it by noise level)


def test_what_ideogram4_does_not_take_is_refused_in_one_line(tiny_ideogram4, tmp_path, capsys):
    """Folders diffkit does not drive (from the JSON alone), bad library arguments and what the command does not
    take for Ideogram 4 (a negative prompt, second prompts, img2img): one line each, no file written."""
    _, path, model = tiny_ideogram4
    for i, (file, change, expected) in enumerate([
            ("model_index.json", {"_class_name": "Flux2Pipeline"}, "is not an Ideogram 4 folder"),
            ("model_index.json", {"unconditional_transformer": [None, None]}, "unconditional_transformer"),
            ("model_index.json", {"text_encoder": ["transformers", "Qwen3Model"]}, "allowed: Qwen3VLModel"),
            ("unconditional_transformer/config.json", {"in_channels": 64}, "4 x the VAE's latent channels"),
            ("transformer/config.json", {"llm_features_dim": 96}, "13 layers x the text encoder's width 8"),
            ("text_encoder/config.json", {"text_config": {"num_hidden_layers": 35, "hidden_size": 8}},
             "allowed: at least 36"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True},
             "allowed: use_dynamic_shifting=false")]):
        with pytest.raises(DiffkitError) as caught:
            check_ideogram4_folder(changed_copy(path, tmp_path / str(i), file, change))
        assert expected in str(caught.value) and "\n" not in str(caught.value)
    for call, expected in [({"negative_prompt": "x"}, "a negative prompt is not allowed for an Ideogram 4"),
                           ({"guidance_scale": 2.0, "guidance_schedule": [2.0]}, "give one"),
                           ({"guidance_schedule": [2.0, 3.0]}, "a guidance_schedule of 2 scales is not allowed with 1"),
                           ({"guidance_schedule": [2.0, float("nan")], "sampler": "unipc"},
                            "give one finite number per step"),
                           ({"max_sequence_length": 20}, "a prompt of 21 tokens is not allowed"),
                           ({"std": 0.0}, "std=0.0 is not allowed"), ({"height": 30}, "multiples of 4"),
                           ({"ip_adapter": object()}, "ip_adapter is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot dog", steps=1, **{"height": SIZE, "width": SIZE, **call})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--negative-prompt", "ugly"], "--negative-prompt does not apply to an Ideogram 4 folder"),
        (["--prompt-2", "x"], "--prompt-2 does not apply to an Ideogram 4 folder"),
        (["--height", "30"], "--height 30 is not allowed; give a positive multiple of 4"),
        (["--guidance-schedule", "7,x"], "--guidance-schedule '7,x' is not allowed; give comma-separated finite"),
        (["--guidance-schedule", "7,3", "--guidance-scale", "2"], "--guidance-schedule with --guidance-scale is not"),
        (["--bria-normalize"], "--bria-normalize applies to a Bria 3.2 folder")], label="an Ideogram 4")


IDEOGRAM4_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3",
                                                           "adaln_modulation", "input_proj", "llm_cond_proj",
                                                           "mlp_in", "mlp_out", "adaln_proj", "linear"],
                      rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3.0})


def test_ideogram4_lora_is_load_lora_weights_and_fuse_lora(tiny_ideogram4, tmp_path, capsys):
    """A diffusers-format file (Ideogram4Pipeline.save_lora_weights, rank / alpha patterns, every Linear) at 0.6:
    load_lora_weights + fuse_lora's weights (the unconditional transformer untouched) and z_0 under the per-step
    guidance; ``diffkit sample --lora`` is the library; a text-encoder key: one line. An ai-toolkit file
    (``diffusion_model.``, a fused ``attention.qkv``, ``attention.o``, kohya lora_down / lora_up with alphas of
    0.5 r and r / 8): Ideogram4Pipeline.lora_state_dict's keys and tensors, merged as its load_lora_weights +
    fuse_lora."""
    from safetensors.torch import save_file
    from test_sd_lora import check_transformer_lora, converted_lora_difference, fused_transformer_lora
    from diffkit.interop.ideogram4_lora import ideogram4_tensors, read_ideogram4_loras
    pipe, path, model = tiny_ideogram4
    lora, fused = fused_transformer_lora(diffusers.Ideogram4Pipeline, path, tmp_path, IDEOGRAM4_LORA, scale=0.6,
                                         loaded=pipe)
    ours = load_ideogram4(path, progress=False, lora=[(lora, 0.6)])
    tokens = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1))
    call = dict(steps=3, return_latents=True, guidance_schedule=[4.0, 2.0, 3.0])
    z0 = text_to_image(ours, PROMPTS, latents=latents_from_tokens(tokens, 8, 8), **call)
    last = {}
    _theirs(fused, tokens, 3, guidance_schedule=[4.0, 2.0, 3.0],
            callback_on_step_end=lambda p, i, t, kw: last.update(kw) or kw)
    error = relative_error(tokens_from_latents(z0), last["latents"])
    base = text_to_image(model, PROMPTS, latents=latents_from_tokens(tokens, 8, 8), **call)
    assert error < 1e-5 and relative_error(z0, base) > 1e-3
    free = fused.unconditional_transformer.state_dict()
    assert all(torch.equal(v, free[k]) for k, v in ours.unconditional_transformer.state_dict().items())
    worst = check_transformer_lora(path, lora, 0.6, ours, model, fused, text_to_image, tmp_path, capsys,
                                   "text_encoder.q_proj.lora_A.weight", "an Ideogram 4 folder (")
    print("Ideogram4Pipeline LoRA latents", error, "weights", worst)  # (after capsys' reads)
    assert worst < 1e-6
    g = torch.Generator().manual_seed(3)
    file, tensors = tmp_path / "ai_toolkit.safetensors", {}
    for module, width, out, alpha in [("attention.qkv", 32, 96, 2.0), ("attention.o", 32, 32, 0.5),
                                      ("feed_forward.w1", 32, 48, 4.0), ("feed_forward.w2", 48, 32, 1.0),
                                      ("feed_forward.w3", 32, 48, 2.0), ("adaln_modulation", 16, 128, 4.0)]:
        tensors[f"diffusion_model.layers.0.{module}.lora_down.weight"] = torch.randn(4, width, generator=g)
        tensors[f"diffusion_model.layers.0.{module}.lora_up.weight"] = torch.randn(out, 4, generator=g)
        tensors[f"diffusion_model.layers.0.{module}.alpha"] = torch.tensor(alpha)
    save_file(tensors, file)
    theirs, mine = diffusers.Ideogram4Pipeline.lora_state_dict(str(file)), ideogram4_tensors(file, tensors)
    assert sorted(mine) == sorted(theirs) and len(mine) == 16 and all(torch.equal(mine[k], theirs[k]) for k in mine)
    worst, changes = converted_lora_difference(pipe, model, file, read_ideogram4_loras, "Ideogram 4", scale=0.4)
    print("ai-toolkit file", worst)
    assert worst < 1e-6 and max(changes.values()) > 1e-2


def test_ideogram4_lora_files_the_loader_would_not_load_are_refused(tmp_path):
    """What Ideogram4LoraLoaderMixin does not load as the file says (drops silently, or fails on): one line naming
    the file's key."""
    from test_sd_lora import assert_files_refused
    from diffkit.interop.ideogram4_lora import read_ideogram4_loras
    a, b = "layers.0.attention.to_q.lora_A.weight", "layers.0.attention.to_q.lora_B.weight"
    good = {"transformer." + a: torch.ones(2, 32), "transformer." + b: torch.ones(32, 2)}
    qkv = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.ones(2, 32),
           "diffusion_model.layers.0.attention.qkv.lora_B.weight": torch.ones(96, 2)}
    assert_files_refused(read_ideogram4_loras, tmp_path, [({**base, **change}, expected) for base, change, expected in [
            (good, {"transformer.layers.0.attention.to_q.alpha": torch.tensor(1.0)}, "to_q.alpha' is not"),
            (good, {"conditional_transformer." + a: torch.ones(2, 32)}, "adapts the transformer only"),
            (good, {"transformer.layers.0.attention.to_k.lora_down.weight": torch.ones(2, 32)}, "to_k.lora_down"),
            (good, {"transformer.layers.0.attention.dora_scale": torch.ones(1, 32)}, "drops dora_scale"),
            (qkv, {"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.ones(2, 32)}, "leaves it over"),
            (qkv, {"diffusion_model.final_layer.adaln_modulation.lora_A.weight": torch.ones(2, 32)}, "leaves it"),
            (qkv, {"diffusion_model.layers.0.attention.o.lora_down.weight": torch.ones(2, 32),
                   "diffusion_model.layers.0.attention.o.lora_up.weight": torch.ones(32, 2)}, "qkv.lora_A.weight'"),
            (qkv, {"diffusion_model.layers.0.attention.o.lora_A.weight": torch.ones(2, 32)}, "no lora_B matrix"),
            (qkv, {"diffusion_model.layers.0.attention.qkv.alpha": torch.ones(2)}, r"alpha of shape \(2,\), not one"),
            (qkv, {"layers.0.attention.qkv.lora_A.weight": torch.ones(2, 32)}, "are one key once"),
            (good, {"transformer.layers.0.feed_forward.w1.lokr_w1": torch.ones(2, 2)}, "is a LyCORIS LoKr tensor")]])
