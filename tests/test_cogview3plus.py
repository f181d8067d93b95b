"""CogView3-Plus folders (diffkit.interop.cogview3plus): diffkit's text_to_image against diffusers' own
CogView3PlusPipeline on a tiny random folder (T5 with the unigram tokenizer of tests/test_interop_sd3.py, a 1-layer
CogView3PlusTransformer2DModel, the tiny VAE of tests/_pixart_helpers.py, CogView3-Plus-3B's CogVideoXDDIMScheduler
config; nothing downloaded), and ``diffkit sample`` on it."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cogview3plus import is_cogview3plus_folder, load_cogview3plus, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a Cat", "hot dog"]
# CogView3-Plus-3B's scheduler/scheduler_config.json (v-prediction, SNR shift 4, zero terminal SNR, trailing)
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
                 snr_shift_scale=4.0, timestep_spacing="trailing")


@pytest.fixture(scope="session")
def cogview3plus_folder(tmp_path_factory):
    """(pipeline loaded from the folder, folder, CogView3Plus) of a tiny random CogView3PlusPipeline, built on first
    use: the T5 (d_model 32, one layer), tokenizer and VAE (f = 2) of tests/_pixart_helpers.py, a transformer of 1
    layer (2 heads of 8, patch 2, 16 x 16 positions)."""
    from _pixart_helpers import tiny_pixart_pipeline
    pixart = tiny_pixart_pipeline()  # its T5 (and unigram tokenizer) and VAE
    transformer = diffusers.CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=16, condition_dim=4, pos_embed_max_size=16, sample_size=8)
    pipe = diffusers.CogView3PlusPipeline(tokenizer=pixart.tokenizer, text_encoder=pixart.text_encoder,
                                          vae=pixart.vae, transformer=transformer,
                                          scheduler=diffusers.CogVideoXDDIMScheduler(**SCHEDULER))
    path = tmp_path_factory.mktemp("cogview3plus") / "cogview3plus"
    pipe.save_pretrained(path)
    return reloaded(path, diffusers.CogView3PlusPipeline, load_cogview3plus)


@pytest.mark.parametrize("call", [
    dict(size=(16, 32), steps=4),  # no negative prompt: the null half zeros
    dict(size=(16, 16), steps=5, guidance_scale=4.0, negative_prompt="ugly blurry",
         original_size=(64, 48), crops_coords_top_left=(8, 4)),
    dict(size=(32, 16), steps=2, guidance_scale=1.0)])  # unguided
def test_cogview3plus_matches_the_pipeline(cogview3plus_folder, call):
    """z_0 from the same z equals CogView3PlusPipeline's (DDIM on the trailing grid at zero terminal SNR, v-pred)."""
    pipe, path, cogview = cogview3plus_folder
    size, steps = call.pop("size"), call.pop("steps")
    noise = torch.randn(2, 4, size[0] // 2, size[1] // 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, latents=noise.clone(), height=size[0], width=size[1],
                      output_type="latent", max_sequence_length=12, **call).images
    ours = text_to_image(cogview, PROMPTS, steps=steps, latents=noise, height=size[0], width=size[1],
                         return_latents=True, max_sequence_length=12, **call)
    assert (theirs - noise).abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured: see docs/interop.md


def test_schedule_prompts_and_command(cogview3plus_folder, tmp_path, capsys):
    """The SNR-shifted, rescaled alpha_bar (closed form against the scheduler's), T5's states with no mask, ``diffkit
    sample`` (the library's grid byte for byte; with --original-size / --crops-coords-top-left too), and one-line
    refusals."""
    pipe, path, cogview = cogview3plus_folder
    assert is_cogview3plus_folder(path) and cogview.latent_shape(1) == (1, 4, 8, 8)
    assert (cogview.schedule.alphas_cumprod - pipe.scheduler.alphas_cumprod.double()).abs().max() < 1e-12
    assert cogview.schedule.alphas_cumprod[-1] == 0 and cogview.prediction_type == "v_prediction"
    context, _ = cogview.encode_prompts(PROMPTS, 12)
    with torch.no_grad():
        theirs = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=12)[0]
    assert relative_error(context, theirs) < 1e-6
    from _pixart_helpers import assert_sample_refusals
    from diffkit.cli import main
    from diffkit.images import save_grid
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "4", "--seed", "5", "--height", "16", "--width", "32",
                 "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(cogview, PROMPTS, steps=4, seed=5, height=16, width=32, negative_prompt="ugly",
                            guidance_scale=3.0, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--lora", str(path / "model_index.json")], "--lora does not apply to a CogView3Plus folder"),
        (["--flow-shift", "2"], "--flow-shift does not apply to a CogView3Plus folder"),
        (["--height", "12"], "--height 12 is not allowed; give a positive multiple of 8")])
    from _sana_helpers import check_option_flags  # CogView3PlusPipeline's original_size / crops_coords_top_left
    check_option_flags(path, cogview, text_to_image, tmp_path, 4, 16, ["--original-size", "64,48",
                       "--crops-coords-top-left", "8,4"], {"original_size": (64, 48), "crops_coords_top_left": (8, 4)})
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--target-size", "16,16"], "--target-size does not apply to a CogView3Plus folder")])
    for call, expected in [(dict(steps=3), "not spaced by T // steps = 333"),
                           (dict(negative_prompt="x", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
                           (dict(resolution_binning=True), "CogView3PlusPipeline has no resolution binning")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(cogview, "hot", **{"steps": 2, "height": 16, "width": 16, **call})


def test_folders_diffkit_does_not_drive_are_refused(cogview3plus_folder, tmp_path):
    from _sana_helpers import changed_copy
    for file, change, expected in [
            ("model_index.json", {"scheduler": ["diffusers", "CogVideoXDPMScheduler"]}, "allowed: CogVideoXDDIM"),
            ("transformer/config.json", {"in_channels": 8}, "in_channels, out_channels = 8, 4"),
            ("scheduler/scheduler_config.json", {"snr_shift_scale": 0}, "snr_shift_scale=0 is not allowed")]:
        with pytest.raises(DiffkitError, match=expected) as info:
            load_cogview3plus(changed_copy(cogview3plus_folder[1], tmp_path / file.replace("/", "_"), file, change),
                              progress=False)
        assert "\n" not in str(info.value)
