"""Qwen-Image folders (diffkit.interop.qwen_image): diffkit's text_to_image against diffusers' own QwenImagePipeline
on a tiny random folder (tests/_qwen_image_helpers.py: a Qwen2.5-VL of one text layer with a tiny vision tower, a
byte-level BPE tokenizer, a one-block transformer, a two-level AutoencoderKLQwenImage; nothing downloaded), and
``diffkit sample`` on it (the library's grid byte for byte; flags that do not apply: one line)."""
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.flux import pack_latents, unpack_latents  # noqa: E402
from diffkit.interop.qwen_image import (image_to_image, is_qwen_image_folder, load_qwen_image,  # noqa: E402
                                        text_to_image)

from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _qwen_image_helpers import tiny_qwen_image_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed


SIZE = 16  # images 16 x 16: latents 4 x 4 (f = 4), 4 packed tokens


@pytest.fixture(scope="session")
def qwen_folder(tmp_path_factory):
    """(pipeline loaded from the folder, folder, QwenImage) of a tiny random QwenImagePipeline."""
    path = tmp_path_factory.mktemp("qwen_image") / "qwen"
    tiny_qwen_image_pipeline().save_pretrained(path)
    return reloaded(path, diffusers.QwenImagePipeline, load_qwen_image)


@pytest.mark.parametrize("scale,negative,length", [(4.0, ["ugly blurry", " "], None), (2.5, ["bad", "bad"], 6),
                                                   (4.0, None, None)])
def test_qwen_image_matches_the_pipeline(qwen_folder, scale, negative, length):
    """z_0 from the same z equals QwenImagePipeline's (true CFG with its norm rescaling against a negative prompt;
    no negative prompt: its unguided loop), and so do the decoded images."""
    pipe, path, qwen = qwen_folder
    assert is_qwen_image_folder(path) and qwen.vae_scale_factor == 4
    noise = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pipe(PROMPTS, negative_prompt=negative, true_cfg_scale=scale, num_inference_steps=3,
                      latents=pack_latents(noise), height=16, width=24, output_type="latent",
                      **({} if length is None else {"max_sequence_length": length})).images
    theirs = unpack_latents(theirs, 4, 6)
    ours = text_to_image(qwen, PROMPTS, steps=3, latents=noise.clone(), height=16, width=24,
                         guidance_scale=None if negative is None else scale, negative_prompt=negative,
                         max_sequence_length=length or 512, return_latents=True)
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5
    with torch.no_grad():
        images = pipe(PROMPTS, negative_prompt=negative, true_cfg_scale=scale, num_inference_steps=3,
                      latents=pack_latents(noise), height=16, width=24, output_type="pt",
                      **({} if length is None else {"max_sequence_length": length})).images
    mine = text_to_image(qwen, PROMPTS, steps=3, latents=noise.clone(), height=16, width=24,
                         guidance_scale=None if negative is None else scale, negative_prompt=negative,
                         max_sequence_length=length or 512)
    assert relative_error(mine, images) < 1e-5


def test_prompt_states_drop_the_template_and_bad_input_is_refused(qwen_folder):
    """The kept states are the language model's last hidden states past the template's first 34 tokens, zero-padded
    under the mask (the pipeline's _get_qwen_prompt_embeds); bad values: one line."""
    pipe, _, qwen = qwen_folder
    context, mask = qwen.encode_prompts(PROMPTS)
    theirs, their_mask = pipe.encode_prompt(PROMPTS, max_sequence_length=512)
    assert torch.equal(mask, their_mask) and mask[1].sum() < mask.shape[1] and relative_error(context, theirs) < 1e-6
    assert context[1, int(mask[1].sum()):].abs().max() == 0
    assert qwen.encode_prompts(PROMPTS, 6)[1] is None  # all real tokens: no mask, as encode_prompt
    other = text_to_image(qwen, PROMPTS, sampler="dpm-solver++-2m", steps=3, height=16, width=16, seed=0,
                          negative_prompt="ugly", return_latents=True)  # any diffkit sampler, on its own grid
    assert other.shape == (2, 4, 4, 4) and bool(other.isfinite().all())
    for call, expected in [
        (dict(guidance_scale=3.0), "guidance_scale=3 (diffusers convention) without a negative prompt is not allowed"),
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(negative_prompt="ugly", guidance_scale=float("nan")), "guidance_scale=nan is not allowed"),
        (dict(max_sequence_length=1025), "max_sequence_length=1025 is not allowed; allowed: 1..1024"),
        (dict(height=12), "height x width 12x16 is not allowed; give positive multiples of 8"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries for 1 prompts"),
        (dict(steps=1), "steps=1 is not allowed with the scheduler's shift_terminal=0.02")]:
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            text_to_image(qwen, "hot", **{"steps": 2, "height": 16, "width": 16, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(qwen_folder, tmp_path, capsys):
    _, path, qwen = qwen_folder
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2", "--height", "16", "--width", "32",
                 "--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers",
                 "--max-sequence-length", "100",
                 "--out", str(out), "--no-progress"]) == 0
    images = text_to_image(qwen, PROMPTS, steps=2, seed=5, height=16, width=32, negative_prompt="ugly",
                           guidance_scale=3.0, max_sequence_length=100, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--ip-adapter", str(tmp_path / "x.bin"), "--ip-adapter-image", str(out)],
         "--ip-adapter applies to a Stable Diffusion folder or an SD3 / FLUX.1 / Chroma folder"),
        (["--controlnet", str(tmp_path), "--control-image", str(out)],
         "no config.json there; give a diffusers QwenImageControlNetModel folder"),
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion does not apply to a Qwen-Image"),
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a Qwen-Image"),
        (["--flow-shift", "2"], "--flow-shift 2 moves a sampler's own grid"),
        (["--clip-skip", "1"], "--clip-skip does not apply to a Qwen-Image folder"),
        (["--guidance-scale", "3"], "guidance_scale=3 (seed convention) without a negative prompt"),
        (["--height", "20"], "--height 20 is not allowed; give a positive multiple of 8")])


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}, "text_encoder is a 'T5EncoderModel'"),
    ("model_index.json", {"_class_name": "QwenImageLayeredPipeline"},
     "use_layer3d_rope=False; a QwenImageLayeredPipeline folder's needs use_layer3d_rope=true"),  # (its page)
    ("model_index.json", {"_class_name": "QwenImageEditPipeline"}, "lacks the Qwen-Image component(s) processor"),
    ("transformer/config.json", {"zero_cond_t": True}, "zero_cond_t=True, which QwenImagePipeline does not drive"),
    ("transformer/config.json", {"in_channels": 64}, "in_channels, out_channels = 64, 4; allowed: 16, 4"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True, which"),
])
def test_folders_diffkit_does_not_drive_are_refused(qwen_folder, tmp_path, file, change, expected):
    copy = tmp_path / "copy"
    shutil.copytree(qwen_folder[1], copy)
    data = json.loads((copy / file).read_text())
    (copy / file).write_text(json.dumps({**data, **change}))
    with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_qwen_image(copy, progress=False)


@pytest.mark.parametrize("steps,strength,inpaint", [(4, 0.6, False), (3, None, True)])
def test_qwen_image_edits_match_the_pipelines(qwen_folder, steps, strength, inpaint):
    """Same z_0 as QwenImageImg2ImgPipeline / QwenImageInpaintPipeline: image i's posterior sample and noise from
    generator seed + i, get_timesteps' cut (3 of 4 at 0.6; the default 0.6 at 3 steps: 2 of 3), true CFG; with a mask
    the kept region blended back at the next sigma after every step."""
    pipe, _, qwen = qwen_folder
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))  # [0, 1]
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:12, 2:10] = 1
    cls = diffusers.QwenImageInpaintPipeline if inpaint else diffusers.QwenImageImg2ImgPipeline
    edit = cls(**pipe.components)
    edit.set_progress_bar_config(disable=True)
    kw = {"negative_prompt": ["ugly", "bad"], "max_sequence_length": 40}
    with torch.no_grad():
        theirs = edit(PROMPTS, image=images, num_inference_steps=steps, height=SIZE, width=SIZE, true_cfg_scale=3.0,
                      output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                      **({"mask_image": mask} if inpaint else {}),
                      **({} if strength is None else {"strength": strength}), **kw).images
    theirs = unpack_latents(theirs, 4, 4)
    ours = image_to_image(qwen, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True,
                          guidance_scale=3.0, mask=mask if inpaint else None, **kw)
    assert relative_error(ours, theirs) < 1e-5
    if inpaint:
        img2img = image_to_image(qwen, images * 2 - 1, PROMPTS, strength, steps=steps, seed=5, return_latents=True,
                                 guidance_scale=3.0, **kw)
        assert relative_error(img2img, theirs) > 1e-3


def test_edit_command_is_the_library_and_refuses_what_does_not_apply(qwen_folder, tmp_path, capsys):
    """``diffkit edit`` (img2img, and with --mask inpainting) writes image_to_image's PNGs byte for byte; flags a
    Qwen-Image folder does not take: one line, before any file."""
    import numpy as np
    from PIL import Image
    from diffkit.commands.edit import read_mask, read_pngs
    from diffkit.images import save_images
    _, path, qwen = qwen_folder
    (tmp_path / "in").mkdir()
    for i in range(2):
        pixels = torch.rand(SIZE, SIZE, 3, generator=torch.Generator().manual_seed(i)).numpy()
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(tmp_path / "in" / f"{i}.png")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[2:9, 5:14] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    base = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0], "--steps",
            "2", "--seed", "5", "--no-progress"]
    images, _ = read_pngs(tmp_path / "in", "RGB")
    for extra, kw in [(["--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers"],
                       {"negative_prompt": "ugly", "guidance_scale": 3.0}),
                      (["--mask", str(tmp_path / "mask.png")], {"mask": read_mask(tmp_path / "mask.png", images)})]:
        out = tmp_path / ("inpainted" if "mask" in kw else "edited")
        assert main(base + extra + ["--out", str(out)]) == 0
        save_images(image_to_image(qwen, images, PROMPTS[0], steps=2, seed=5, output_range="-1,1", **kw),
                    tmp_path / "expected", prefix="edit")
        for i in range(2):
            name = f"edit_0000{i}.png"
            assert (out / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    for extra, expected in [
        (["--textual-inversion", str(tmp_path / "x.pt")], "--textual-inversion does not apply to a Qwen-Image"),
        (["--mask", str(tmp_path / "mask.png"), "--padding-mask-crop", "2"],
         "--padding-mask-crop 2 applies to diffusers folders (Stable Diffusion, SD-XL, SD3, FLUX.1;"),
        (["--guidance-scale", "3"], "guidance_scale=3 (seed convention) without a negative prompt")]:
        capsys.readouterr()
        assert main(base + extra + ["--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never").exists()


QWEN_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "add_v_proj", "to_out.0", "img_mod.1", "net.2",
                                                      "img_in", "norm_out.linear", "linear_1"],
                 rank_pattern={"to_k": 2}, alpha_pattern={"add_v_proj": 3.0})


@pytest.fixture(scope="module")
def qwen_lora(qwen_folder, tmp_path_factory):
    """(file, QwenImagePipeline after load_lora_weights + fuse_lora(lora_scale=0.3)) of a diffusers-format LoRA
    (QwenImagePipeline.save_lora_weights) on the tiny folder's transformer."""
    from test_sd_lora import fused_transformer_lora
    return fused_transformer_lora(diffusers.QwenImagePipeline, qwen_folder[1], tmp_path_factory.mktemp("qwen_lora"),
                                  QWEN_LORA, scale=0.3, loaded=qwen_folder[0])


def test_qwen_image_lora_is_load_lora_weights_and_fuse_lora(qwen_folder, qwen_lora, tmp_path, capsys):
    """A diffusers-format file (rank / alpha patterns) at 0.3: load_lora_weights + fuse_lora's weights and z_0;
    ``diffkit sample --lora`` and ``diffkit edit --lora`` are the library; a text-encoder key: one line."""
    from test_sd_lora import check_transformer_lora
    _, path, qwen = qwen_folder
    lora, pipe = qwen_lora
    ours = load_qwen_image(path, progress=False, lora=[(lora, 0.3)])
    worst = check_transformer_lora(path, lora, 0.3, ours, qwen, pipe, text_to_image, tmp_path, capsys,
                                   "text_encoder.model.layers.0.self_attn.q_proj.lora_A.weight",
                                   "a Qwen-Image folder (QwenImageLoraLoaderMixin adapts the transformer only")
    assert worst < 1e-6  # measured: see docs/interop.md
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = unpack_latents(pipe(PROMPTS, negative_prompt="ugly", true_cfg_scale=3.0, num_inference_steps=3,
                                     latents=pack_latents(noise), height=16, width=16, output_type="latent").images,
                                4, 4)
    z0 = text_to_image(ours, PROMPTS, steps=3, latents=noise, negative_prompt="ugly", guidance_scale=3.0,
                       return_latents=True)
    print("Qwen-Image LoRA weights", worst, "z_0", relative_error(z0, theirs))
    assert relative_error(z0, theirs) < 1e-5  # measured: see docs/interop.md
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    images = tmp_path / "in"
    save_images(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1, images, prefix="in")
    assert main(["edit", "--checkpoint", str(path), "--images", str(images), "--prompt", "hot", "--steps", "2",
                 "--lora", f"{lora}:0.3", "--out", str(tmp_path / "edited"), "--no-progress"]) == 0
    save_images(image_to_image(ours, read_pngs(images, "RGB")[0], "hot", steps=2, seed=0, output_range="-1,1"),
                tmp_path / "expected", prefix="edit")
    assert (tmp_path / "edited" / "edit_00000.png").read_bytes() == \
        (tmp_path / "expected" / "edit_00000.png").read_bytes()


def _converted(lora, kind: str) -> dict:
    """The diffusers-format file ``lora``'s tensors as another trainer writes them (``kind``: ComfyUI / musubi
    ``diffusion_model.`` lora_down / lora_up with .alpha on some modules, the same as lora_A / lora_B without alpha,
    kohya ``lora_unet_``, PEFT's bare ``default.`` names with .alpha)."""
    from safetensors.torch import load_file
    out = {}
    for key, value in load_file(lora).items():
        module, part = key[len("transformer."):].rsplit(".lora_", 1)
        down = part == "A.weight"
        alpha = "to_q" in module or "img_in" in module  # an .alpha on some modules (2.0: scale 2 / r)
        name, tail = {"comfy": (f"diffusion_model.{module}", "lora_down.weight" if down else "lora_up.weight"),
                      "comfy_ab": (f"diffusion_model.{module}", "lora_" + part),
                      "kohya": ("lora_unet_" + module.replace(".", "_"), "lora_down.weight" if down else
                                "lora_up.weight"),
                      "default": (module, f"lora_{part[0]}.default.weight")}[kind]
        out[f"{name}.{tail}"] = value
        if down and alpha and kind != "comfy_ab":
            out[f"{name}.alpha"] = torch.tensor(2.0)
    return out


@pytest.mark.parametrize("kind,metadata", [("comfy", False), ("comfy_ab", False), ("kohya", True),
                                          ("default", False)])
def test_qwen_image_converted_lora_files_are_diffusers_conversions(qwen_folder, qwen_lora, tmp_path, kind,
                                                                   metadata):
    """ComfyUI / musubi (diffusion_model.), kohya (lora_unet_, with the diffusers file's metadata: its alphas on top
    of the file's) and PEFT default. files: the weights of QwenImagePipeline.load_lora_weights + fuse_lora."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from diffkit.interop.qwen_image_lora import read_qwen_image_loras
    from test_sd_lora import converted_lora_difference
    pipe, _, qwen = qwen_folder
    with safe_open(qwen_lora[0], "pt") as f:
        meta = f.metadata()
    file = tmp_path / f"{kind}.safetensors"
    save_file(_converted(qwen_lora[0], kind), file, metadata=meta if metadata else None)
    worst, changes = converted_lora_difference(pipe, qwen, file, read_qwen_image_loras, "Qwen-Image")
    assert max(changes.values()) > 1e-2
    print("Qwen-Image LoRA", kind, worst)
    assert worst < 1e-6  # measured: see docs/interop.md


@pytest.mark.parametrize("tensors,expected", [
    ({"diffusion_model.img_in.lora_down.weight": torch.ones(2, 16),
      "diffusion_model.img_in.dora_scale": torch.ones(1, 32)}, "key 'diffusion_model.img_in.dora_scale' is not "
                                                               "supported on a Qwen-Image folder (diffusers drops"),
    ({"lora_unet_img_in.lora_down.weight": torch.ones(2, 16), "img_in.lora_up.weight": torch.ones(32, 2)},
     "key 'img_in.lora_up.weight' is not supported on a Qwen-Image folder (a kohya file's keys all begin"),
    ({"diffusion_model.img_in.lora_down.weight": torch.ones(2, 16),
      "diffusion_model.txt_in.lora_A.weight": torch.ones(2, 32)},
     "key 'diffusion_model.txt_in.lora_A.weight' is not supported on a Qwen-Image folder (a converted file's keys "
     "end in .lora_down.weight / .lora_up.weight / .alpha)"),
    ({"transformer.img_in.lora_A.weight": torch.ones(2, 16), "transformer.img_in.hada_w1_a": torch.ones(2, 16)},
     "key 'transformer.img_in.hada_w1_a' is a LyCORIS LoHa tensor; diffusers 0.42.1's QwenImagePipeline"),
    ({"lora_unet_transformer_blocks_3_attn_to_q.lora_down.weight": torch.ones(2, 32),
      "lora_unet_transformer_blocks_3_attn_to_q.lora_up.weight": torch.ones(32, 2)},
     "key 'lora_unet_transformer_blocks_3_attn_to_q.lora_down.weight' names no Linear layer of the Qwen-Image "
     "transformer")])
def test_qwen_image_lora_refusals(qwen_folder, tmp_path, tensors, expected):
    """What diffusers does not load as the file says, or diffkit does not map: one line naming the key."""
    from test_sd_lora import assert_lora_refused
    assert_lora_refused(load_qwen_image, qwen_folder[1], tmp_path, tensors, expected)
