"""Kandinsky 5 image folders (diffkit.interop.kandinsky5): diffkit's text_to_image against diffusers' own
Kandinsky5T2IPipeline on a tiny random folder (tests/_kandinsky5_helpers.py; nothing downloaded), the prompt
encoders against its encode_prompt, ``diffkit sample`` on it, and one-line refusals. The pipeline draws one of
its seven resolutions, so the tiny folder runs at 1024 x 1024 (latents 4 x 128 x 128, a 1-block transformer)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.kandinsky5 import PROMPT_TEMPLATE, is_kandinsky5_folder, load_kandinsky5, \
    pipeline_resolution, text_to_image  # noqa: E402

from _kandinsky5_helpers import save_kandinsky5, tiny_kandinsky5_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals, edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot  dog &amp; more"]  # the second one cleaned (html, whitespace) by the pipeline


@pytest.fixture(scope="session")
def kandinsky5(tmp_path_factory):
    """(the in-memory pipeline, its saved folder, load_kandinsky5 of the folder)."""
    root = tmp_path_factory.mktemp("kandinsky5")
    pipe = tiny_kandinsky5_pipeline(root)
    save_kandinsky5(pipe, root / "k5")
    return pipe, root / "k5", load_kandinsky5(root / "k5", progress=False)


def _noise(batch=2, seed=7):
    """The pipeline's channel-last latents (B, 1, 128, 128, 4) and diffkit's (B, 4, 128, 128) of them."""
    z = torch.randn(batch, 1, 128, 128, 4, generator=torch.Generator().manual_seed(seed))
    return z, z[:, 0].permute(0, 3, 1, 2).clone()


def test_kandinsky5_encodes_prompts_as_the_pipeline(kandinsky5):
    pipe, path, model = kandinsky5
    assert is_kandinsky5_folder(path) and pipe.prompt_template == PROMPT_TEMPLATE
    with torch.no_grad():
        qwen, clip, cu = pipe.encode_prompt(PROMPTS, device="cpu", dtype=torch.float32, max_sequence_length=20)
    context, pooled = model.encode_prompts(PROMPTS, 20)
    assert qwen.shape == context.shape and torch.equal(qwen, context) and torch.equal(clip, pooled)
    assert int(cu.diff().max()) == context.shape[1]  # the transformer's text RoPE positions: the padded length
    assert pipeline_resolution(512, 512) == (1024, 1024) and pipeline_resolution(1280, 768) == (1280, 768)
    assert pipeline_resolution(600, 1400) == (640, 1408)


@pytest.mark.parametrize("kw", [dict(guidance_scale=4.0, negative_prompt=["blurry", "ugly bad"]),
                                dict(guidance_scale=1.0)])
def test_kandinsky5_matches_the_pipeline(kandinsky5, kw):
    """z_0 from the same z equals Kandinsky5T2IPipeline's (CFG with negative prompts; s = 1: one call a step)."""
    pipe, _, model = kandinsky5
    theirs_z, ours_z = _noise()
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=2, latents=theirs_z, output_type="latent", height=1024,
                      width=1024, **kw).image[:, 0].permute(0, 3, 1, 2)
    ours = text_to_image(model, PROMPTS, steps=2, latents=ours_z, return_latents=True, **kw)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 5.1e-7 (CFG), 1.9e-7 (s = 1)


def test_kandinsky5_images_are_the_pipelines_and_sample_is_the_library(kandinsky5, tmp_path, capsys):
    """Decoded without the VAE's shift_factor, as the pipeline; ``diffkit sample`` at 512 x 512 draws the
    pipeline's 1024 x 1024, byte for byte the library's grid."""
    pipe, path, model = kandinsky5
    theirs_z, ours_z = _noise(1, seed=3)
    seen = {}

    def keep(_, i, t, kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return {}
    with torch.no_grad():
        theirs = pipe(PROMPTS[:1], num_inference_steps=1, latents=theirs_z, output_type="pt", height=1024,
                      width=1024, callback_on_step_end=keep).image
    latents = seen["latents"][:, 0].permute(0, 3, 1, 2)
    ours = text_to_image(model, PROMPTS[:1], steps=1, latents=ours_z, return_latents=True)
    assert relative_error(ours, latents) < 1e-5  # measured 5.8e-6 (one step)
    images = (model.decode(latents) / 2 + 0.5).clamp(0, 1)  # D(z / scaling_factor), channels-last, no shift
    assert relative_error(images, theirs) < 1e-6  # measured 0 (8.3e-4 with z contiguous: the VAE's conv rounding)
    out = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(path), "--prompt", "hot dog", "--num", "1", "--steps", "1", "--seed", "5",
            "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
            "--height", "512", "--width", "512", "--batch-size", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    images = text_to_image(model, ["hot dog"], steps=1, seed=5, height=512, width=512, negative_prompt="ugly",
                           guidance_scale=3.0, output_range="-1,1")
    assert images.shape[2:] == (1024, 1024)
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    from safetensors.torch import save_file
    key, bad = "lora_unet_out_layer_out_layer.lora_down.weight", tmp_path / "bad.safetensors"
    save_file({key: torch.zeros(2, 16)}, bad)
    assert_sample_refusals(main, path, tmp_path, capsys, [  # RKF3
        (["--flow-shift", "2"], "--flow-shift does not apply to a Kandinsky 5 folder"),
        (["--lora", str(bad)], f"key {key!r} is not supported on a Kandinsky 5 folder (")])  # --lora: read
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(path), "--images", str(tmp_path), "--prompt", "hot", "--no-progress",
                 "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a Kandinsky5T2IPipeline folder, which diffkit edit does not take" in err[0]  # RKF2
    assert not (tmp_path / "never").exists()


def test_bad_kandinsky5_arguments_are_one_line_errors(kandinsky5):
    _, _, model = kandinsky5
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(max_sequence_length=1025), "max_sequence_length=1025 is not allowed; allowed: 1..1024"),
        (dict(height=0), "height=0 is not allowed; give a positive integer"),
        (dict(resolution_binning=True), "resolution_binning is not allowed")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **call)


@pytest.mark.parametrize("file,change,expected", [  # RKF1
    ("model_index.json", {"_class_name": "Kandinsky5T2VPipeline"}, "vae is a .AutoencoderKL.; allowed: Autoenco"),
    ("model_index.json", {"_class_name": "Kandinsky5I2IPipeline"}, "visual_cond = 4, 4, False; allowed: .* true"),
    ("model_index.json", {"text_encoder_2": ["transformers", "T5EncoderModel"]}, "text_encoder_2 is a 'T5Encoder"),
    ("transformer/config.json", {"visual_cond": True}, "visual_cond = 4, 4, True; allowed"),
    ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which"),
])
def test_kandinsky5_folders_diffkit_does_not_drive_are_refused(kandinsky5, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected) as error:
        load_kandinsky5(edited_copy(kandinsky5[1], tmp_path / "copy", file, change), progress=False)
    assert "\n" not in str(error.value)
