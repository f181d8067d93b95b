"""Chroma folders (diffkit.interop.chroma): text_to_image / image_to_image against diffusers' own ChromaPipeline /
ChromaImg2ImgPipeline on a tiny random folder (the T5 encoder, VAE and scheduler of the tiny FLUX.1-dev pipeline of
test_interop_flux, a tiny ChromaTransformer2DModel; nothing downloaded), with negative prompts and CFG."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.chroma import chroma_text_mask, image_to_image, is_chroma_folder, load_chroma, \
    text_to_image  # noqa: E402
from diffkit.interop.flux import is_flux_folder, pack_latents, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8, 16 packed tokens
LENGTH = 12  # T5 tokens


@pytest.fixture(scope="module")
def tiny_chroma(tmp_path_factory):
    """(ChromaPipeline.from_pretrained of the saved folder, the folder, load_chroma of it)."""
    root = tmp_path_factory.mktemp("chroma")
    flux = tiny_flux_pipeline(root, dev=True)  # its T5 (d_model 32), 16-channel VAE and dynamic-shift scheduler
    torch.manual_seed(2)
    transformer = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(2, 2, 4), approximator_num_channels=16, approximator_hidden_dim=32,
        approximator_layers=1)
    pipe = diffusers.ChromaPipeline(scheduler=flux.scheduler, vae=flux.vae, text_encoder=flux.text_encoder_2,
                                    tokenizer=flux.tokenizer_2, transformer=transformer)
    pipe.save_pretrained(root / "chroma")
    pipe = diffusers.ChromaPipeline.from_pretrained(root / "chroma", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "chroma", load_chroma(root / "chroma", progress=False)


def _latents(batch=2, seed=7):
    return torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_chroma_encodes_prompts_and_masks_as_the_pipeline(tiny_chroma):
    """The T5 states (encoded under the tokenizer's mask) and Chroma's text mask (every token and the first padding
    one) are the pipeline's; the folder is Chroma's, not FLUX's."""
    pipe, folder, chroma = tiny_chroma
    assert is_chroma_folder(folder) and not is_flux_folder(folder)
    assert chroma.latent_shape(2, SIZE, SIZE) == (2, 16, 8, 8)
    context, mask = chroma.encode_prompts(PROMPTS, LENGTH)
    theirs, _, theirs_mask, *_ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=LENGTH,
                                                    do_classifier_free_guidance=False)
    assert mask.dtype == theirs_mask.dtype == torch.float32 and torch.equal(mask, theirs_mask)
    assert mask.sum(1).tolist() == [7.0, 4.0]  # "a photo of a cat </s>" + one pad; "hot dog </s>" + one pad
    torch.testing.assert_close(context, theirs, rtol=0, atol=1e-5)
    assert torch.equal(chroma_text_mask(torch.tensor([[1, 1, 0, 0]])), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))


@pytest.mark.parametrize("kw", [
    {"negative_prompt": "ugly blurry", "guidance_scale": 4.0},
    {"negative_prompt": ["ugly", "blurry the"]},  # the pipeline's default 5.0
    {"guidance_scale": 1.0}])  # no CFG
def test_chroma_matches_the_pipeline(tiny_chroma, kw):
    """Same z_0 as ChromaPipeline from the same latents: flow Euler on its sigmas shifted with mu of 16 tokens, the
    transformer's text + image attention mask, CFG against the negative prompt under its own mask."""
    pipe, _, chroma = tiny_chroma
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3, latents=pack_latents(latents),
                      output_type="latent", max_sequence_length=LENGTH, **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = text_to_image(chroma, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                         **kw)
    error = relative_error(ours, theirs)
    print("chroma", kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_chroma_draws_as_the_pipeline_and_decodes(tiny_chroma):
    """From seeds: sample i's z from generator seed + i as the pipeline's randn_tensor (unpacked shape); images
    decoded as its VAE step."""
    pipe, _, chroma = tiny_chroma
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=2, output_type="pt",
                      max_sequence_length=LENGTH, negative_prompt="ugly",
                      generator=[torch.Generator().manual_seed(3 + i) for i in range(2)]).images
    ours = text_to_image(chroma, PROMPTS, steps=2, seed=3, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                         negative_prompt="ugly")
    assert ours.shape == theirs.shape == (2, 3, SIZE, SIZE)
    print("chroma images from seeds", float((ours - theirs).abs().max()))
    assert float((ours - theirs).abs().max()) < 1e-5


@pytest.mark.parametrize("steps, strength", [(4, 0.6), (3, None)])
def test_chroma_img2img_matches_the_pipeline(tiny_chroma, steps, strength):
    """Same z_0 as ChromaImg2ImgPipeline: image i's posterior sample and noise from generator seed + i,
    get_timesteps' cut (3 of 4 at 0.6; the default 0.9: 3 of 3), CFG with a negative prompt."""
    pipe, _, chroma = tiny_chroma
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))  # [0, 1]
    img2img = diffusers.ChromaImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    kw = {"max_sequence_length": LENGTH, "negative_prompt": "ugly", "guidance_scale": 3.0}
    with torch.no_grad():
        theirs = img2img(PROMPTS, image=images, num_inference_steps=steps, height=SIZE, width=SIZE,
                         output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                         **({} if strength is None else {"strength": strength}), **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = image_to_image(chroma, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("chroma img2img", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_bad_chroma_arguments_are_one_line_errors(tiny_chroma):
    _, _, chroma = tiny_chroma
    for kw, match in (({"negative_prompt": "x", "guidance_scale": 1.0}, "feeds only CFG"),
                      ({"guidance_scale": float("nan")}, "guidance_scale=nan is not allowed"),
                      ({"max_sequence_length": 513}, "max_sequence_length=513 is not allowed"),
                      ({"height": 10}, "height x width 10x16 is not allowed")):
        with pytest.raises(DiffkitError, match=match) as err:
            text_to_image(chroma, PROMPTS, steps=1, **{"height": SIZE, "width": SIZE, **kw})
        assert "\n" not in str(err.value)
    assert re.search("Chroma", chroma.network().__class__.__name__)


def test_sample_and_edit_commands_run_a_chroma_folder(tiny_chroma, tmp_path, capsys):
    """`diffkit sample` / `diffkit edit` on a Chroma folder write text_to_image's / image_to_image's images byte for
    byte (--negative-prompt, --guidance-scale in the diffusers convention, the pipelines' sigmas), within one PNG
    level of ChromaPipeline's."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_grid, save_images
    pipe, folder, chroma = tiny_chroma
    guided = ["--negative-prompt", "ugly", "--guidance-scale", "4", "--guidance-convention", "diffusers",
              "--max-sequence-length", str(LENGTH), "--steps", "2", "--seed", "5", "--no-progress"]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--height", str(SIZE), "--width", str(SIZE), "--out", str(out)] + guided) == 0
    kw = {"negative_prompt": "ugly", "guidance_scale": 4.0, "max_sequence_length": LENGTH}
    save_grid(text_to_image(chroma, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, output_range="-1,1", **kw),
              tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=2, output_type="np",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (out, tmp_path / "theirs.png"))
    print("chroma sample command vs pipeline PNG levels", np.abs(ours - ref).max())
    assert np.abs(ours - ref).max() <= 1
    (tmp_path / "in").mkdir()
    for i in range(2):
        pixels = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(i)).numpy()
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in" / f"{i}.png")
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
                 "--strength", "0.6", "--out", str(tmp_path / "edited")] + guided) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    save_images(image_to_image(chroma, images, PROMPTS[0], 0.6, steps=2, seed=5, output_range="-1,1", **kw),
                tmp_path / "expected", prefix="edit")
    for i in range(2):
        assert (tmp_path / "edited" / f"edit_0000{i}.png").read_bytes() == \
            (tmp_path / "expected" / f"edit_0000{i}.png").read_bytes()
    capsys.readouterr()


def test_what_chroma_does_not_take_is_refused_in_one_line(tiny_chroma, tmp_path, capsys):
    """FLUX's and SD's flags (--prompt-2, --true-cfg-scale, --freeu, --padding-mask-crop, --pag-scale ...)
    and a folder with an image encoder or a transformer of other channels: one line each, before any output."""
    import json
    from diffkit.cli import main
    _, folder, _ = tiny_chroma
    base = ["--checkpoint", str(folder), "--prompt", "a cat", "--no-progress"]
    (tmp_path / "in.png").write_bytes(b"")
    for command, extra, match in (
            ("sample", ["--prompt-2", "x"], "--prompt-2 does not apply to a Chroma folder"),
            ("sample", ["--true-cfg-scale", "2"], "--true-cfg-scale does not apply to a Chroma folder"),
            ("sample", ["--freeu", "1.1,1.2,0.9,0.2"], "--freeu does not apply to a Chroma folder"),
            ("sample", ["--pag-scale", "2"], "--pag-scale does not apply to a Chroma folder"),
            ("sample", ["--guidance-scale", "0", "--guidance-convention", "diffusers", "--negative-prompt", "x",
                        "--height", "16", "--width", "16"], "the negative prompt feeds only CFG"),
            ("sample", ["--height", "10"], "--height 10 is not allowed"),
            ("edit", ["--images", str(tmp_path / "in.png"), "--mask", str(tmp_path / "in.png"),
                      "--padding-mask-crop", "4"], "--padding-mask-crop 4 is not offered for a Chroma folder"),
            ("edit", ["--images", str(tmp_path / "in.png"), "--prompt-2", "x"],
             "--prompt-2 does not apply to a Chroma folder")):
        out = tmp_path / ("out.png" if command == "sample" else "out")
        assert main([command] + base + extra + ["--out", str(out)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not out.exists()
    for name, part, change, match in (
            ("ip", "model_index.json", {"image_encoder": ["transformers", "CLIPVisionModelWithProjection"]},
             "has image_encoder="),
            ("channels", "transformer/config.json", {"in_channels": 384}, "has in_channels=384"),
            ("inpaint", "model_index.json", {"_class_name": "ChromaRadiancePipeline"}, "which diffkit does not drive")):
        bad = tmp_path / name
        for sub in ("model_index.json", "vae/config.json", "scheduler/scheduler_config.json",
                    "transformer/config.json"):
            (bad / sub).parent.mkdir(parents=True, exist_ok=True)
            config = json.loads((folder / sub).read_text())
            (bad / sub).write_text(json.dumps({**config, **(change if sub == part else {})}))
        for sub in ("text_encoder", "tokenizer"):
            (bad / sub).symlink_to(folder / sub)
        with pytest.raises(DiffkitError, match=match) as err:
            load_chroma(bad, progress=False)
        assert "\n" not in str(err.value)


def test_other_samplers_run_a_chroma_folder(tiny_chroma):
    """Any diffkit sampler runs the folder on its own grid of the size's flow schedule (shift e^mu), close to the
    pipeline's 28-step flow Euler run with CFG."""
    pipe, _, chroma = tiny_chroma
    latents = _latents()
    kw = {"negative_prompt": "ugly", "max_sequence_length": LENGTH}
    with torch.no_grad():
        theirs = unpack_latents(pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=28, output_type="latent",
                                     latents=pack_latents(latents), **kw).images, 8, 8)
    for sampler in ("unipc", "dpm-solver++-2m"):
        ours = text_to_image(chroma, PROMPTS, sampler=sampler, steps=10, latents=latents, return_latents=True, **kw)
        error = relative_error(ours, theirs)
        print("chroma", sampler, error)
        assert torch.isfinite(ours).all() and error < 0.05, (sampler, error)


@pytest.fixture(scope="module")
def chroma_ip(tiny_chroma, tmp_path_factory):
    """(root with image_encoder/ and xlabs.safetensors, image.png, negative.png): test_flux_ip_adapter's random
    XLabs file for the tiny Chroma transformer (its double blocks are FLUX's)."""
    from safetensors.torch import save_file
    from test_flux_ip_adapter import xlabs_state
    from test_ip_adapter import image_png, tiny_image_encoder
    pipe = tiny_chroma[0]
    root = tmp_path_factory.mktemp("chroma_ip")
    encoder = tiny_image_encoder(root / "image_encoder")
    save_file(xlabs_state(pipe.transformer, encoder), root / "xlabs.safetensors")
    return root, image_png(root / "image.png"), image_png(root / "negative.png", seed=3)


@pytest.mark.parametrize("scale, kw", [(0.8, {"negative_prompt": "ugly"}),
                                       (1.3, {"negative_ip_adapter_image": "negative.png", "guidance_scale": 3.0})])
def test_chroma_ip_adapter_matches_the_pipeline(tiny_chroma, chroma_ip, scale, kw):
    """Same z_0 as ChromaPipeline with load_ip_adapter (an XLabs file) + ip_adapter_image: CFG's negative pass with
    the pipeline's black negative image, or a given one; the folder's transformer is left plain."""
    from PIL import Image
    from diffkit.interop.flux_ip_adapter import load_flux_ip_adapter
    pipe, _, chroma = tiny_chroma
    root, png, _ = chroma_ip
    latents, kw = _latents(), dict(kw, max_sequence_length=LENGTH)
    pipe.load_ip_adapter(str(root), weight_name="xlabs.safetensors", local_files_only=True,
                         image_encoder_pretrained_model_name_or_path=str(root / "image_encoder"),
                         image_encoder_dtype=torch.float32)
    try:
        pipe.set_ip_adapter_scale(scale)
        negative = kw.pop("negative_ip_adapter_image", None)
        with torch.no_grad():
            theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3, latents=pack_latents(latents),
                          output_type="latent", ip_adapter_image=Image.open(png).convert("RGB"),
                          **({} if negative is None else {
                              "negative_ip_adapter_image": Image.open(root / negative).convert("RGB")}), **kw).images
    finally:
        pipe.unload_ip_adapter()
    theirs = unpack_latents(theirs, 8, 8)
    adapter = load_flux_ip_adapter(root / "xlabs.safetensors", png, scale, progress=False,
                                   negative_image=None if negative is None else root / negative)
    ours = text_to_image(chroma, PROMPTS, steps=3, latents=latents, return_latents=True, ip_adapter=adapter, **kw)
    plain = text_to_image(chroma, PROMPTS, steps=3, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("chroma ip-adapter", scale, kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    assert relative_error(plain, theirs) > 1e-3 and not hasattr(chroma.transformer, "encoder_hid_proj")


def test_commands_take_an_ip_adapter_on_a_chroma_folder(tiny_chroma, chroma_ip, tmp_path, capsys):
    """``diffkit sample`` / ``diffkit edit --ip-adapter FILE:S --ip-adapter-image PNG --negative-ip-adapter-image PNG``
    on a Chroma folder: the library's images with the same adapter, byte for byte; the negative image without CFG is
    one line."""
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_grid, save_images
    from diffkit.interop.flux_ip_adapter import load_flux_ip_adapter
    _, folder, chroma = tiny_chroma
    root, png, negative = chroma_ip
    adapter = ["--ip-adapter", f"{root / 'xlabs.safetensors'}:0.7", "--ip-adapter-image", str(png),
               "--negative-ip-adapter-image", str(negative)]
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "5", "--no-progress",
              "--max-sequence-length", str(LENGTH)] + adapter
    size = ["--height", str(SIZE), "--width", str(SIZE)]
    assert main(["sample", "--num", "1", "--out", str(tmp_path / "grid.png")] + size + common) == 0
    ours = load_flux_ip_adapter(root / "xlabs.safetensors", png, 0.7, progress=False, negative_image=negative)
    kw = {"steps": 2, "seed": 5, "max_sequence_length": LENGTH, "ip_adapter": ours, "output_range": "-1,1"}
    save_grid(text_to_image(chroma, PROMPTS[0], height=SIZE, width=SIZE, **kw), tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert main(["edit", "--images", str(png), "--out", str(tmp_path / "edited")] + common) == 0
    images, _ = read_pngs(png, "RGB")
    save_images(image_to_image(chroma, images, PROMPTS[0], **kw), tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edited" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    capsys.readouterr()
    assert main(["sample", "--out", str(tmp_path / "bad.png"), "--guidance-scale", "0"] + size + common) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "negative IP-Adapter image feeds only CFG" in err[0], err
    assert not (tmp_path / "bad.png").exists()

def _inpaint_pipeline(pipe):
    """ChromaInpaintPipeline of ``pipe``'s components; diffusers 0.42.1's reads ``transformer.config.guidance_embeds``,
    FLUX's key, which a ChromaTransformer2DModel's config lacks (AttributeError): registered as False (it feeds
    nothing: Chroma has no guidance embedder)."""
    inpaint = diffusers.ChromaInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    if "guidance_embeds" not in inpaint.transformer.config:
        inpaint.transformer.register_to_config(guidance_embeds=False)
    return inpaint


@pytest.mark.parametrize("steps, strength, kw", [
    (4, 0.6, {"negative_prompt": "ugly", "guidance_scale": 3.0}),
    (3, 1.0, {})])  # from pure noise; the pipeline's default CFG 7.0 against ""
def test_chroma_inpainting_matches_the_pipeline(tiny_chroma, steps, strength, kw):
    """Same z_0 as ChromaInpaintPipeline (FLUX.1's inpainting loop: image i's posterior, then its noise, from
    generator seed + i; the kept region blended back at the next sigma after every step), one mask for both."""
    pipe, _, chroma = tiny_chroma
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))  # [0, 1]
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:12, 2:10] = 1
    inpaint = _inpaint_pipeline(pipe)
    kw = dict(kw, max_sequence_length=LENGTH)
    with torch.no_grad():
        theirs = inpaint(PROMPTS, image=images, mask_image=mask, num_inference_steps=steps, strength=strength,
                         height=SIZE, width=SIZE, output_type="latent",
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = image_to_image(chroma, images * 2 - 1, PROMPTS, strength, mask=mask, steps=steps, seed=5,
                          return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("chroma inpainting", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)
    img2img = image_to_image(chroma, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True,
                             **kw)
    assert relative_error(img2img, theirs) > 1e-3


def test_edit_command_inpaints_a_chroma_folder(tiny_chroma, tmp_path, capsys):
    """`diffkit edit --mask` on a Chroma folder writes image_to_image(mask=)'s PNGs byte for byte (the inpainting
    pipeline's defaults: CFG 7.0 against ""), within one PNG level of ChromaInpaintPipeline's."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_images
    pipe, folder, chroma = tiny_chroma
    (tmp_path / "in").mkdir()
    pixels = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0)).numpy()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in" / "0.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2:9, 5:14] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--mask",
                 str(tmp_path / "mask.png"), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "5", "--no-progress",
                 "--max-sequence-length", str(LENGTH), "--out", str(tmp_path / "edited")]) == 0
    images, _ = read_pngs(tmp_path / "in", "RGB")
    ours = image_to_image(chroma, images, PROMPTS[0], mask=read_mask(tmp_path / "mask.png", images), steps=2, seed=5,
                          max_sequence_length=LENGTH, output_range="-1,1")
    save_images(ours, tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edited" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    inpaint = _inpaint_pipeline(pipe)
    with torch.no_grad():
        theirs = inpaint(PROMPTS[0], image=Image.open(tmp_path / "in" / "0.png"),
                         mask_image=Image.open(tmp_path / "mask.png"), num_inference_steps=2, output_type="np",
                         height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                         generator=torch.Generator().manual_seed(5)).images
    written = np.asarray(Image.open(tmp_path / "edited" / "edit_00000.png"), dtype=np.float64)
    levels = np.abs(written - (theirs[0] * 255).round()).max()
    print("chroma inpainting command vs pipeline PNG levels", levels)
    assert levels <= 1
    assert "wrote 1 inpainted images" in capsys.readouterr().out


LORA_SCALE = 0.7
PEFT_LAYERS = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
               "transformer_blocks.0.ff.net.0.proj", "single_transformer_blocks.0.proj_mlp",
               "single_transformer_blocks.0.attn.to_v", "x_embedder", "context_embedder", "proj_out",
               "distilled_guidance_layer.in_proj", "distilled_guidance_layer.layers.0.linear_1"]  # the approximator too
KOHYA = {"double_blocks.0.img_attn.qkv": 2, "double_blocks.0.txt_attn.proj": 2, "double_blocks.0.img_mlp.0": 3,
         "double_blocks.0.txt_mlp.2": 2, "single_blocks.0.linear1": 2, "single_blocks.0.linear2": 2, "img_in": 2,
         "txt_in": 2, "final_layer.linear": 2}  # BFL module: rank (alpha 1.5, but none on final_layer.linear)


def _chroma_loras(transformer):
    """({diffusers / PEFT key: tensor}, {kohya key: tensor}) of random LoRAs for the tiny transformer: PEFT rank 2
    (alpha r: no metadata) on PEFT_LAYERS; kohya on the BFL modules of KOHYA (fused qkv / linear1 included)."""
    from diffkit.interop.flux_lora import bfl_targets
    gen, layers = torch.Generator().manual_seed(4), dict(transformer.named_modules())
    peft = {}
    for name in PEFT_LAYERS:
        layer = layers[name]
        peft[f"transformer.{name}.lora_A.weight"] = torch.randn(2, layer.in_features, generator=gen) * 0.3
        peft[f"transformer.{name}.lora_B.weight"] = torch.randn(layer.out_features, 2, generator=gen) * 0.3
    kohya = {}
    for name, rank in KOHYA.items():
        targets = [layers[t] for t in bfl_targets(name.replace(".", "_"))]
        base = "lora_unet_" + name.replace(".", "_")
        kohya[f"{base}.lora_down.weight"] = torch.randn(rank, targets[0].in_features, generator=gen) * 0.3
        rows = sum(t.out_features for t in targets)
        kohya[f"{base}.lora_up.weight"] = torch.randn(rows, rank, generator=gen) * 0.3
        if name != "final_layer.linear":  # (diffusers 0.42.1 drops a final-layer alpha: none there)
            kohya[f"{base}.alpha"] = torch.tensor(1.5)
    return peft, kohya


@pytest.fixture(scope="module")
def chroma_lora(tiny_chroma, tmp_path_factory):
    """({style: file}, {style: a ChromaPipeline on a copy of the transformer after load_lora_weights + fuse_lora(0.7)}):
    the kohya file as diffusers converts it (its converter leaves "transformer." off img_in / txt_in / final_layer:
    restored), but linear1 by the closed form (diffusers 0.42.1 splits it at FLUX.1's 3072 / 12288 only)."""
    import copy
    from safetensors.torch import save_file
    pipe = tiny_chroma[0]
    peft, kohya = _chroma_loras(pipe.transformer)
    root = tmp_path_factory.mktemp("chroma_lora")
    files, pipes = {"peft": root / "peft.safetensors", "kohya": root / "kohya.safetensors"}, {}
    for style, tensors in (("peft", peft), ("kohya", kohya)):
        save_file(tensors, files[style])
        fused = diffusers.ChromaPipeline(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
        fused.set_progress_bar_config(disable=True)
        given = tensors if style == "peft" else {
            k if k.startswith("transformer.") else "transformer." + k: v for k, v in diffusers.ChromaPipeline.
            lora_state_dict({k: v for k, v in kohya.items() if "linear1" not in k}).items()}
        fused.load_lora_weights(given)
        fused.fuse_lora(lora_scale=LORA_SCALE, components=["transformer"])
        fused.unload_lora_weights()
        if style == "kohya":
            block = fused.transformer.single_transformer_blocks[0]
            layers = [block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp]
            down, up = kohya["lora_unet_single_blocks_0_linear1.lora_down.weight"], \
                kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"]
            with torch.no_grad():
                delta = LORA_SCALE * 1.5 / 2 * up @ down  # s (alpha / r) B A, split by rows
                for layer, rows in zip(layers, delta.split([layer.out_features for layer in layers])):
                    layer.weight += rows
        pipes[style] = fused
    return files, pipes


@pytest.mark.parametrize("style", ["peft", "kohya"])
def test_chroma_lora_matches_load_lora_weights_and_fuse_lora(tiny_chroma, chroma_lora, style):
    """A diffusers / PEFT file (transformer. keys, the approximator's layers too) or a kohya one (BFL names, fused
    qkv / linear1 split by rows, alpha / r): the transformer's weights are the pipeline's after load_lora_weights +
    fuse_lora(0.7), and so are 3 sampled steps' latents with CFG; scale 0 changes nothing, bit for bit."""
    _, folder, chroma = tiny_chroma
    files, pipes = chroma_lora
    merged = load_chroma(folder, progress=False, lora=[(files[style], LORA_SCALE)])
    theirs, base = pipes[style].transformer.state_dict(), chroma.transformer.state_dict()
    worst, changed = 0.0, 0
    for key, value in merged.transformer.state_dict().items():
        worst = max(worst, float((value - theirs[key]).abs().max()))
        changed += not torch.equal(value, base[key])
    print("chroma lora weights", style, worst, changed)
    assert worst < 1e-6 and changed == (len(PEFT_LAYERS) if style == "peft" else 9 + 2 + 3)
    latents, kw = _latents(), {"negative_prompt": "ugly", "max_sequence_length": LENGTH}
    with torch.no_grad():
        ref = unpack_latents(pipes[style](PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3,
                                          output_type="latent", latents=pack_latents(latents), **kw).images, 8, 8)
    ours = text_to_image(merged, PROMPTS, steps=3, latents=latents, return_latents=True, **kw)
    plain = text_to_image(chroma, PROMPTS, steps=3, latents=latents, return_latents=True, **kw)
    print("chroma lora latents", style, float((ours - ref).abs().max()), relative_error(ours, ref))
    assert relative_error(ours, ref) < 1e-5 and relative_error(plain, ref) > 1e-3
    off = load_chroma(folder, progress=False, lora=[(files[style], 0.0)])
    assert all(torch.equal(a, b) for a, b in zip(off.transformer.state_dict().values(), base.values()))


def test_commands_take_a_lora_on_a_chroma_folder(tiny_chroma, chroma_lora, tmp_path, capsys):
    """``diffkit sample --lora FILE:S`` / ``diffkit edit --mask M --lora FILE:S`` on a Chroma folder write the merged
    folder's images byte for byte; LoRA keys its pipelines' load_lora_weights cannot load (T5 / CLIP text-encoder
    keys, the FLUX.1 modulation linears Chroma lacks, the approximator under BFL names): one line, no output."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_grid, save_images
    from test_interop_flux_more import assert_lora_refused
    _, folder, _ = tiny_chroma
    files, _ = chroma_lora
    common = ["--checkpoint", str(folder), "--prompt", PROMPTS[0], "--steps", "2", "--seed", "5", "--no-progress",
              "--max-sequence-length", str(LENGTH), "--lora", f"{files['kohya']}:{LORA_SCALE}"]
    assert main(["sample", "--num", "1", "--height", str(SIZE), "--width", str(SIZE), "--out",
                 str(tmp_path / "grid.png")] + common) == 0
    merged = load_chroma(folder, progress=False, lora=[(files["kohya"], LORA_SCALE)])
    kw = {"steps": 2, "seed": 5, "max_sequence_length": LENGTH, "output_range": "-1,1"}
    save_grid(text_to_image(merged, PROMPTS[0], height=SIZE, width=SIZE, **kw), tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    Image.fromarray((torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1)).numpy() * 255)
                    .round().astype(np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.pad(np.full((6, 6), 255, np.uint8), 5)).save(tmp_path / "mask.png")
    assert main(["edit", "--images", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "edited")] + common) == 0
    images, _ = read_pngs(tmp_path / "in.png", "RGB")
    save_images(image_to_image(merged, images, PROMPTS[0], mask=read_mask(tmp_path / "mask.png", images), **kw),
                tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edited" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()
    capsys.readouterr()
    a, b = torch.zeros(2, 32), torch.zeros(32, 2)
    assert_lora_refused(folder, {
        "t5": ({"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": a,
                "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": b},
               "adapts the text_encoder \\(text_encoder. keys\\), which a Chroma folder's load_lora_weights does "
               "not; allowed: transformer. keys, or kohya / BFL transformer ones"),
        "clip": ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": a,
                  "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": b,
                  "lora_unet_img_in.lora_down.weight": torch.zeros(2, 64),
                  "lora_unet_img_in.lora_up.weight": torch.zeros(16, 2)}, "adapts the text_encoder \\(lora_te1_ keys"),
        "modulation": ({"lora_unet_double_blocks_0_img_mod_lin.lora_down.weight": torch.zeros(2, 16),
                        "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight": torch.zeros(96, 2)},
                       "key 'lora_unet_double_blocks_0_img_mod_lin.lora_down.weight' adapts "
                       "transformer_blocks.0.norm1.linear, which this Chroma transformer lacks"),
        "approximator": ({"diffusion_model.distilled_guidance_layer.in_proj.lora_A.weight": torch.zeros(2, 16),
                          "diffusion_model.distilled_guidance_layer.in_proj.lora_B.weight": torch.zeros(32, 2)},
                         "key 'diffusion_model.distilled_guidance_layer.in_proj.lora_A.weight' is not supported")},
        tmp_path, capsys)


def test_chroma_textual_inversion_matches_load_textual_inversion(tiny_chroma, tmp_path, capsys):
    """A two-vector embedding of T5's width (diffusers' {token: tensor} file) in the prompt and the negative prompt:
    the latents of ChromaPipeline.load_textual_inversion (its T5 tokenizer and encoder: the pipelines have no CLIP);
    ``diffkit sample --textual-inversion`` writes the library's grid byte for byte; a CLIP-width file: one line."""
    import copy
    from safetensors.torch import save_file
    from diffkit.cli import main
    from diffkit.images import save_grid
    pipe, folder, chroma = tiny_chroma
    save_file({"<cat-toy>": torch.randn(2, 32, generator=torch.Generator().manual_seed(6))},
              tmp_path / "toy.safetensors")
    save_file({"<clip>": torch.randn(768)}, tmp_path / "clip.safetensors")
    theirs = diffusers.ChromaPipeline(**{**pipe.components, "tokenizer": copy.deepcopy(pipe.tokenizer),
                                         "text_encoder": copy.deepcopy(pipe.text_encoder)})
    theirs.set_progress_bar_config(disable=True)
    theirs.load_textual_inversion(str(tmp_path / "toy.safetensors"))
    prompts, latents = ["a <cat-toy> on a mat", "hot dog"], _latents()
    kw = {"negative_prompt": "ugly <cat-toy>", "max_sequence_length": LENGTH}
    with torch.no_grad():
        ref = unpack_latents(theirs(prompts, height=SIZE, width=SIZE, num_inference_steps=3, output_type="latent",
                                    latents=pack_latents(latents), **kw).images, 8, 8)
    merged = load_chroma(folder, progress=False, textual_inversion=[tmp_path / "toy.safetensors"])
    ours = text_to_image(merged, prompts, steps=3, latents=latents, return_latents=True, **kw)
    plain = text_to_image(chroma, prompts, steps=3, latents=latents, return_latents=True, **kw)
    print("chroma textual inversion", float((ours - ref).abs().max()), relative_error(ours, ref))
    assert relative_error(ours, ref) < 1e-5 and relative_error(plain, ref) > 1e-3
    common = ["sample", "--checkpoint", str(folder), "--prompt", prompts[0], "--steps", "2", "--no-progress",
              "--max-sequence-length", str(LENGTH), "--height", str(SIZE), "--width", str(SIZE), "--num", "1"]
    assert main(common + ["--textual-inversion", str(tmp_path / "toy.safetensors"), "--out",
                          str(tmp_path / "grid.png")]) == 0
    save_grid(text_to_image(merged, prompts[0], steps=2, seed=0, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                            output_range="-1,1"), tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()
    assert main(common + ["--textual-inversion", str(tmp_path / "clip.safetensors"), "--out",
                          str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedding of <clip> has width 768; this text encoder's token embeddings have width 32" \
        in err[0], err
    assert not (tmp_path / "bad.png").exists()


def test_the_default_guidance_scale_is_the_pipelines_in_either_convention(tiny_chroma):
    """With no guidance_scale, prompt_guidance takes the pipeline's default s (5.0) whichever convention is named:
    "seed" reads a *given* scale as W (s = 1 + W), not the default (which gave s = 6.0 before)."""
    from diffkit.guidance import pipeline_scale
    _, _, chroma = tiny_chroma
    assert pipeline_scale(None, 5.0, "seed") == 5.0 and pipeline_scale(3.0, 5.0, "seed") == 4.0
    assert pipeline_scale(3.0, 5.0, "diffusers") == 3.0
    scales = {convention: 1 + chroma.prompt_guidance(PROMPTS, 2, 2, convention=convention)[0].w
              for convention in ("diffusers", "seed")}
    assert scales == {"diffusers": 5.0, "seed": 5.0}
    assert chroma.prompt_guidance(PROMPTS, 2, 2, guidance_scale=4.0, convention="seed")[0].w == 4.0  # s = 5
