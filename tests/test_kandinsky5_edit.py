"""Kandinsky 5 image-to-image folders (diffkit.interop.kandinsky5_edit): diffkit's edit_image against diffusers' own
Kandinsky5I2IPipeline on a tiny random folder (tests/_kandinsky5_helpers.py with ``edit=True``; nothing downloaded),
the prompts seeing the image against its encode_prompt, ``diffkit edit`` on it, and one-line refusals. The pipeline
draws one of its seven resolutions (about 1024^2 pixels each); for time, both its table and diffkit's are replaced by
two small ones here (:func:`small_resolutions`; the table's use is Kandinsky5T2IPipeline's, tests/test_kandinsky5.py),
so a 56 x 40 input is edited at 80 x 48 (latents 4 x 6 x 10). LoRA files (both Kandinsky 5 pipelines' loader) against
its ``load_lora_weights`` + ``fuse_lora``."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_images  # noqa: E402
from diffkit.interop import kandinsky5  # noqa: E402
from diffkit.interop.kandinsky5 import load_kandinsky5, text_to_image  # noqa: E402
from diffkit.interop.kandinsky5_edit import EDIT_TEMPLATE, edit_image  # noqa: E402

from _kandinsky5_helpers import save_kandinsky5, tiny_kandinsky5_pipeline  # noqa: E402
from _pixart_helpers import edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot  dog &amp; more"]  # the second one cleaned (html, whitespace) by the pipeline


@pytest.fixture(scope="session")
def kandinsky5_edit(tmp_path_factory):
    """(the in-memory pipeline, its saved folder, load_kandinsky5 of the folder, two random 56 x 40 PIL images)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("kandinsky5_edit")
    pipe = tiny_kandinsky5_pipeline(root, edit=True)
    save_kandinsky5(pipe, root / "k5i2i")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(2)]
    return pipe, root / "k5i2i", load_kandinsky5(root / "k5i2i", progress=False), images


SMALL = ((64, 64), (80, 48))  # (w, h): the resolution tables of these tests


@pytest.fixture(autouse=True)
def small_resolutions(monkeypatch, kandinsky5_edit):
    """The pipeline's and diffkit's resolution tables both :data:`SMALL` (the same nearest-ratio rule over them)."""
    monkeypatch.setattr(kandinsky5, "RESOLUTIONS", SMALL)
    monkeypatch.setattr(kandinsky5_edit[0], "resolutions", list(SMALL))


def test_kandinsky5_edit_matches_the_pipeline(kandinsky5_edit):
    """The prompt states (each prompt seeing its halved image) equal encode_prompt's; z_0 from the same noise and
    generator (the posterior drawn after the noise) equals Kandinsky5I2IPipeline's, CFG s = 4, negative prompts."""
    pipe, _, model, images = kandinsky5_edit
    assert pipe.prompt_template == EDIT_TEMPLATE and pipe.prompt_template_encode_start_idx == 54
    with torch.no_grad():
        qwen, clip, cu = pipe.encode_prompt(PROMPTS, image=images, device="cpu", dtype=torch.float32)
    context, pooled = model.encode_prompts(PROMPTS, images=images)
    assert qwen.shape == context.shape and torch.equal(qwen, context) and torch.equal(clip, pooled)
    assert int(cu.diff().max()) == context.shape[1]  # the transformer's text RoPE positions: the padded length
    kw = dict(guidance_scale=4.0, negative_prompt=["blurry", "ugly bad"])
    with torch.no_grad():
        theirs = pipe(image=images, prompt=PROMPTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      output_type="latent", **kw).image[:, 0].permute(0, 3, 1, 2)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 1, 6, 10, 4, generator=generator)[:, 0].permute(0, 3, 1, 2)  # the pipeline's draw
    ours = edit_image(model, images, PROMPTS, steps=2, seed=None, generator=generator, latents=noise,
                      return_latents=True, **kw)
    assert theirs.shape == (2, 4, 6, 10) and theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 2.8e-7


def _edit_argv(path, folder):
    return ["edit", "--checkpoint", str(path), "--images", str(folder), "--prompt", "hot dog", "--steps", "1", "--seed",
            "3", "--guidance-scale", "1", "--guidance-convention", "diffusers", "--no-progress"]


def test_kandinsky5_edit_command_is_the_library(kandinsky5_edit, tmp_path):
    """``diffkit edit`` byte for byte the library's images (seed + i: noise, then posterior)."""
    _, path, model, images = kandinsky5_edit
    save_images(edit_image(model, images[:1], "hot dog", steps=1, seed=3, guidance_scale=1.0, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    (tmp_path / "in").mkdir()
    images[0].save(tmp_path / "in" / "a.png")
    assert main(_edit_argv(path, tmp_path / "in") + ["--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()


def test_kandinsky5_edit_refusals_are_one_line(kandinsky5_edit, tmp_path, capsys):
    """Before any weight is read: SDEdit's --strength, --height, diffkit sample on the folder; a T2I transformer in
    an I2I folder (load_kandinsky5)."""
    _, path, _, images = kandinsky5_edit
    (tmp_path / "in").mkdir()
    images[0].save(tmp_path / "in" / "a.png")
    for argv, expected in [
            (_edit_argv(path, tmp_path / "in") + ["--strength", "0.5"], "--strength does not apply to a Kandinsky 5 "
                                                                        "image-to-image"),
            (_edit_argv(path, tmp_path / "in") + ["--height", "512"], "--height does not apply to a Kandinsky 5 "
                                                                      "image-to-image"),
            (["sample", "--checkpoint", str(path), "--prompt", "hot", "--no-progress", "--out",
              str(tmp_path / "never" / "x.png")], "Kandinsky5I2IPipeline folder, which diffkit sample does not take")]:
        capsys.readouterr()
        assert main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "never")])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    copy = edited_copy(path, tmp_path / "copy", "transformer/config.json", {"visual_cond": False})
    with pytest.raises(DiffkitError, match="visual_cond = 4, 4, False; allowed: .* visual_cond true") as error:
        load_kandinsky5(copy, progress=False)
    assert "\n" not in str(error.value)


def test_bad_kandinsky5_edit_arguments_are_one_line_errors(kandinsky5_edit):
    _, _, model, images = kandinsky5_edit
    for call, expected in [
        (lambda: edit_image(model, images, PROMPTS * 2), "4 prompts for 2 images; give one, or one per image"),
        (lambda: edit_image(model, images[:1], "hot", max_sequence_length=50), "with its image is over "
                                                                               "max_sequence_length=50"),
        (lambda: edit_image(model, images[:1], "hot", resolution_binning=True), "resolution_binning is not allowed"),
        (lambda: text_to_image(model, "hot"), "text_to_image needs a Kandinsky5T2IPipeline folder"),
        (lambda: model.encode_prompts(["hot"]), "sees its image: give one image per prompt \\(1\\), not 0")]:
        with pytest.raises(DiffkitError, match=expected) as error:
            call()
        assert "\n" not in str(error.value)


K5_LORA = dict(r=4, lora_alpha=8.0, target_modules=r".*(to_query|to_key|to_value|in_layer|attention\.out_layer|"
                                                   r"modulation\.out_layer|(forward|out_layer)\.out_layer)",
               rank_pattern={"to_key": 2}, alpha_pattern={"to_value": 3.0})


def test_kandinsky5_lora_is_load_lora_weights_and_fuse_lora(kandinsky5_edit, tmp_path, capsys):
    """A diffusers-format file (Kandinsky5I2IPipeline.save_lora_weights, rank / alpha patterns, every Linear: the
    embeddings, modulations, both block kinds, the output layer) at 0.2: load_lora_weights + fuse_lora's weights and
    z_0 of an edit with CFG; ``diffkit edit --lora`` is edit_image byte for byte; a kohya key: one line, no folder
    made (KandinskyLoraLoaderMixin converts nothing)."""
    from safetensors.torch import save_file
    from test_sd_lora import fused_transformer_lora
    pipe, path, model, images = kandinsky5_edit
    lora, fused = fused_transformer_lora(diffusers.Kandinsky5I2IPipeline, path, tmp_path, K5_LORA, scale=0.2,
                                         loaded=pipe)
    fused.resolutions = list(SMALL)
    ours = load_kandinsky5(path, progress=False, lora=[(lora, 0.2)])
    theirs, base = fused.transformer.state_dict(), model.transformer.state_dict()
    worst = max(float((v - theirs[k]).abs().max()) for k, v in ours.transformer.state_dict().items())
    assert max(float((v - base[k]).abs().max()) for k, v in theirs.items()) > 1e-2
    kw = dict(guidance_scale=4.0, negative_prompt="blurry")
    with torch.no_grad():
        theirs = fused(image=images[:1], prompt=PROMPTS[:1], num_inference_steps=2, output_type="latent",
                       generator=torch.Generator().manual_seed(0), **kw).image[:, 0].permute(0, 3, 1, 2)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, 6, 10, 4, generator=generator)[:, 0].permute(0, 3, 1, 2)  # the pipeline's draw
    z0 = edit_image(ours, images[:1], PROMPTS[:1], steps=2, seed=None, generator=generator, latents=noise,
                    return_latents=True, **kw)
    error = relative_error(z0, theirs)
    assert relative_error(z0, edit_image(model, images[:1], PROMPTS[:1], steps=2, seed=None, latents=noise,
                                         generator=torch.Generator().manual_seed(0), return_latents=True, **kw)) > 1e-3
    assert error < 1e-5 and worst < 1e-6
    save_images(edit_image(ours, images[:1], "hot dog", steps=1, seed=3, guidance_scale=1.0, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    (tmp_path / "in").mkdir()
    images[0].save(tmp_path / "in" / "a.png")
    assert main(_edit_argv(path, tmp_path / "in") + ["--lora", f"{lora}:0.2", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    bad = "lora_unet_visual_transformer_blocks_0_feed_forward_in_layer.lora_down.weight"
    save_file({bad: torch.zeros(2, 16)}, tmp_path / "bad.safetensors")
    capsys.readouterr()
    assert main(_edit_argv(path, tmp_path / "in") + ["--lora", str(tmp_path / "bad.safetensors"), "--out",
                                                     str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key {bad!r} is not supported on a Kandinsky 5 folder (" in err[0], err
    assert not (tmp_path / "never").exists()
    print("Kandinsky5I2IPipeline LoRA latents", error, "weights", worst)  # (after capsys' reads)
