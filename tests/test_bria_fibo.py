"""Bria FIBO folders (diffkit.interop.bria_fibo): text_to_image against diffusers' own BriaFiboPipeline on a tiny
random folder (a 2-layer SmolLM3 of width 16 on Qwen-Image's tiny byte-level tokenizer, a BriaFiboTransformer2DModel
of one double and two single blocks, a Wan 2.2-style AutoencoderKLWan of z_dim 8 with 2 x 2 patches (f = 16), a
dynamic-shift FlowMatchEuler scheduler; nothing downloaded), with negative prompts, CFG and text masks."""
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.bria import is_bria_folder  # noqa: E402
from diffkit.interop.bria_fibo import (check_bria_fibo_folder, is_bria_fibo_folder, load_bria_fibo,  # noqa: E402
                                       select_layers, text_to_image)

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _qwen_image_helpers import tiny_qwen_tokenizer  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ['{"subject": "hot dog", "style": "photo"}', "cat"]  # a JSON prompt and a short one: a padded text mask
H, W = 32, 48  # latents 8 x 2 x 3: 6 tokens


@pytest.fixture(scope="module")
def tiny_fibo(tmp_path_factory):
    """(BriaFiboPipeline.from_pretrained of the saved folder, the folder, load_bria_fibo of it)."""
    root = tmp_path_factory.mktemp("fibo")
    torch.manual_seed(0)
    smol = transformers.SmolLM3ForCausalLM(transformers.SmolLM3Config(  # vocab past get_prompt_embeds' id 128000
        vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=None, bos_token_id=128000,
        eos_token_id=128001)).eval()
    transformer = diffusers.BriaFiboTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[2, 2, 4], text_encoder_dim=16)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.3 for i in range(8)], latents_std=[1 + 0.1 * i for i in range(8)], is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    diffusers.BriaFiboPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=smol,
                               tokenizer=tiny_qwen_tokenizer()).save_pretrained(root / "fibo")
    return reloaded(root / "fibo", diffusers.BriaFiboPipeline, load_bria_fibo)


def _edit_folder(folder, root):
    """A BriaFiboEditPipeline folder of the tiny folder's parts (links; model_index.json naming the Edit pipeline)."""
    edit_folder = root / "edit_folder"
    for sub in ("scheduler", "transformer", "text_encoder", "tokenizer", "vae"):
        (edit_folder / sub).parent.mkdir(parents=True, exist_ok=True)
        (edit_folder / sub).symlink_to(folder / sub)
    (edit_folder / "model_index.json").write_text(json.dumps(
        {**json.loads((folder / "model_index.json").read_text()), "_class_name": "BriaFiboEditPipeline"}))
    return edit_folder


def _latents(seed=7):
    return torch.randn(2, 8, H // 16, W // 16, generator=torch.Generator().manual_seed(seed))


def _tokens(z):  # the pipeline's (B, h w, C) latents of z (B, C, h, w), and back
    return z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])


def test_bria_fibo_encodes_prompts_as_the_pipeline(tiny_fibo):
    """The last two SmolLM3 states concatenated, the per-block states (3 blocks of 3 states), the tokenizer mask; an
    empty prompt's row of <|begin_of_text|>; the folder is FIBO's, not Bria 3.2's."""
    pipe, folder, fibo = tiny_fibo
    assert is_bria_fibo_folder(folder) and is_bria_folder(folder)  # (dispatched as FIBO first)
    assert fibo.latent_shape(2, H, W) == (2, 8, 2, 3) and fibo.latent_shape(1)[2:] == (64, 64)
    for prompts in (PROMPTS, ["", "cat"], [""]):
        context, mask = fibo.encode_prompts(prompts)
        embeds, _, _, their_mask, _, layers, _ = pipe.encode_prompt(prompts, device="cpu", guidance_scale=1.0)
        layers = select_layers(layers, 3)
        theirs = torch.cat([embeds] + layers, dim=-1)
        assert context.shape == theirs.shape and context.shape[-1] == 32 + 3 * 16
        torch.testing.assert_close(context, theirs, rtol=0, atol=1e-6)
        assert torch.equal(mask, their_mask)
    assert not bool(fibo.encode_prompts(PROMPTS)[1].all())  # "cat" is padded
    assert select_layers("abc", 2) == ["b", "c"] and select_layers("ab", 4) == ["a", "b", "b", "b"]


@pytest.mark.parametrize("kw", [
    {"negative_prompt": "blurry and dark, a dog"},  # the negative states longer: the prompts' padded
    {},  # the default s = 5 against "" (one <|begin_of_text|> token, padded)
    {"negative_prompt": ["", "hot"], "guidance_scale": 3.0}])  # one negative per prompt, an empty one (unguided:
# the mask case of test_bria_fibo_edit_matches_the_pipeline)
def test_bria_fibo_matches_the_pipeline(tiny_fibo, kw):
    """Same z_0 as BriaFiboPipeline from the same latents: flow Euler on linspace sigmas shifted with mu of 6
    tokens, s T as the timestep, unpacked tokens, the key mask, CFG."""
    pipe, _, fibo = tiny_fibo
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=H, width=W, num_inference_steps=3, latents=_tokens(latents),
                      output_type="latent", **kw).images
    theirs = theirs.view(2, H // 16, W // 16, 8).permute(0, 3, 1, 2)
    ours = text_to_image(fibo, PROMPTS, steps=3, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("bria fibo", kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_sample_command_runs_a_bria_fibo_folder(tiny_fibo, tmp_path, capsys):
    """`diffkit sample` writes text_to_image's images byte for byte (from seeds: sample i's z from generator
    seed + i; the Wan VAE on one frame), within one PNG level of BriaFiboPipeline's; another sampler runs."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    pipe, folder, fibo = tiny_fibo
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--height", str(H), "--width", str(W), "--out", str(out), "--negative-prompt",
                 "ugly", "--guidance-scale", "4", "--guidance-convention", "diffusers", "--steps", "2", "--seed", "5",
                 "--no-progress"]) == 0
    kw = {"negative_prompt": "ugly", "guidance_scale": 4.0}
    ours = text_to_image(fibo, PROMPTS, steps=2, seed=5, height=H, width=W, output_range="-1,1", **kw)
    save_grid(ours, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=H, width=W, num_inference_steps=2, output_type="pt",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    assert theirs.shape == ours.shape == (2, 3, H, W)
    image_error = float((ours / 2 + 0.5 - theirs).abs().max())
    save_grid(theirs * 2 - 1, tmp_path / "theirs.png", 1)
    png = (np.asarray(Image.open(p), dtype=np.float64) for p in (out, tmp_path / "theirs.png"))
    levels = np.abs(next(png) - next(png)).max()
    with torch.no_grad():
        reference = pipe(PROMPTS, height=H, width=W, num_inference_steps=10, latents=_tokens(_latents()),
                         output_type="latent").images.view(2, H // 16, W // 16, 8).permute(0, 3, 1, 2)
    unipc = relative_error(text_to_image(fibo, PROMPTS, sampler="unipc", steps=5, latents=_latents(),
                                         return_latents=True), reference)
    with capsys.disabled():
        print("bria fibo images from seeds", image_error, "PNG levels", levels, "unipc 5 vs 10 steps", unipc)
    assert image_error < 1e-5 and levels <= 1 and unipc < 0.05
    capsys.readouterr()


def test_what_bria_fibo_does_not_take_is_refused_in_one_line(tiny_fibo, tmp_path, capsys):
    """diffkit edit on a BriaFiboPipeline folder, --lora, --prompt-2, sizes off 16, diffkit sample or --strength on
    an Edit folder, another pipeline, a patched transformer or one of other channels, a VAE of another factor,
    max_sequence_length past 3000, an IP-Adapter: one line each, before any weight is read."""
    from diffkit.cli import main
    _, folder, fibo = tiny_fibo
    base = ["--checkpoint", str(folder), "--prompt", "cat", "--out", str(tmp_path / "x.png"), "--no-progress"]
    for argv, message in (
            (["edit", "--images", str(tmp_path), *base], "diffkit edit takes a BriaFiboEditPipeline folder"),
            (["sample", *base, "--lora", "x.safetensors"], "--lora does not apply to a Bria FIBO folder"),
            (["sample", *base, "--prompt-2", "dog"], "--prompt-2 does not apply to a Bria FIBO folder"),
            (["sample", *base, "--height", "24"], "multiple of 16 (BriaFiboPipeline's fixed vae_scale_factor 16)")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()
    edit_folder = _edit_folder(folder, tmp_path)  # the library loads it, diffkit sample does not take it
    assert check_bria_fibo_folder(edit_folder)[0]["_class_name"] == "BriaFiboEditPipeline"
    for argv, message in ((["sample", *base[:1], str(edit_folder), *base[2:]],
                           "Bria FIBO Edit folder, which diffkit sample does not take"),
                          (["edit", "--images", str(tmp_path), "--strength", "0.5", *base[:1], str(edit_folder),
                            *base[2:]], "--strength does not apply to a Bria FIBO Edit folder")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    for part, change, message in (
            ("model_index.json", {"_class_name": "BriaFiboImg2ImgPipeline"}, "which diffkit does not drive"),
            ("transformer/config.json", {"patch_size": 2}, "patch_size=2; allowed: 1"),
            ("transformer/config.json", {"in_channels": 32}, "in_channels=32; allowed: 8"),
            ("vae/config.json", {"scale_factor_spatial": 8}, "scale_factor_spatial=8; allowed: 16")):
        bad = changed_folder(folder, tmp_path, part, change)
        with pytest.raises(DiffkitError, match=re.escape(message)) as info:
            load_bria_fibo(bad, progress=False)
        assert "\n" not in str(info.value)
    for kw, message in (({"max_sequence_length": 3001}, "allowed: 1..3000"),
                        ({"ip_adapter": object()}, "has no load_ip_adapter"),
                        ({"height": 40}, "multiples of 16")):
        with pytest.raises(DiffkitError, match=re.escape(message)):
            text_to_image(fibo, "cat", steps=1, return_latents=True, **kw)


def test_bria_fibo_edit_matches_the_pipeline(tiny_fibo, monkeypatch):
    """edit_image against BriaFiboEditPipeline on the folder's components (from the same generators): one reference
    with a negative prompt (images decoded, 2 steps), two references (ids on planes 1 and 2), a grey-pasted mask
    unguided (3 steps); the default size snapped to the preferred resolutions; edit JSON prompts checked."""
    import numpy as np
    from PIL import Image
    from diffkit.interop.bria_fibo_edit import edit_image
    _, _, fibo = tiny_fibo
    pipe = diffusers.BriaFiboEditPipeline(
        transformer=fibo.transformer, vae=fibo.vae, text_encoder=fibo.text_encoder, tokenizer=fibo.tokenizer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(fibo.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    second = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    mask = (rng.random((40, 56)) > 0.5).astype(np.float32)
    prompts = ['{"edit_instruction": "make it red"}', {"edit_instruction": "blue", "style": "photo"}]
    with torch.no_grad():  # decoded images: one reference, a negative prompt, 2 steps
        theirs = pipe(prompt=prompts, image=image, num_inference_steps=2, height=H, width=W, output_type="pt",
                      negative_prompt="dog", generator=[torch.Generator().manual_seed(4 + i) for i in range(2)]).images
    ours = edit_image(fibo, image, prompts, steps=2, seed=4, height=H, width=W, negative_prompt="dog")
    print("bria fibo edit images", float((ours - theirs).abs().max()))
    assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) < 1e-5
    for references, kw in (([image, second], {}), (image, {"mask": mask, "guidance_scale": 1.0})):
        generators = [torch.Generator().manual_seed(4 + i) for i in range(2)]
        with torch.no_grad():
            theirs = pipe(prompt=prompts, image=references, num_inference_steps=3, generator=generators, height=H,
                          width=W, output_type="latent", **kw).images
        ours = edit_image(fibo, references, prompts, steps=3, seed=4, height=H, width=W, return_latents=True, **kw)
        theirs = theirs.view(2, *ours.shape[2:], 8).permute(0, 3, 1, 2)
        print("bria fibo edit", sorted(kw), relative_error(ours, theirs))
        assert relative_error(ours, theirs) < 1e-5
    from diffkit.interop import chroma
    seen = {}
    monkeypatch.setattr(chroma, "text_to_image", lambda *_, **kw: seen.update(kw))
    edit_image(fibo, image, prompts)  # the default size: the pipeline's 768 x 1360 latents 48 x 85 (measured)
    assert (seen["height"], seen["width"]) == (768, 1360)
    monkeypatch.undo()
    for kw, message in (({"prompts": "make it red"}, "with an \"edit_instruction\" key"),
                        ({"images": [image, second], "mask": mask}, "one mask in [0, 1] of the one reference"),
                        ({"images": "x.png"}, "give a PIL image")):
        with pytest.raises(DiffkitError, match=re.escape(message)):
            edit_image(fibo, kw.pop("images", image), kw.pop("prompts", prompts), steps=1, **kw)


def test_edit_command_runs_a_bria_fibo_edit_folder(tiny_fibo, tmp_path, monkeypatch):
    """`diffkit edit` on a BriaFiboEditPipeline folder: each image its own reference with --mask pasted as grey,
    written as edit_image's images byte for byte (2 steps; the pipeline's preferred sizes cut to two small ones, so
    that the snapped default size is 32 x 64: the snapping itself is test_bria_fibo_edit_matches_the_pipeline's)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_images
    from diffkit.interop.bria_fibo_edit import edit_image
    from diffusers.pipelines.bria_fibo import pipeline_bria_fibo_edit
    monkeypatch.setitem(pipeline_bria_fibo_edit.PREFERRED_RESOLUTION, 1024 * 1024, [(48, 48), (64, 32)])
    _, folder, fibo = tiny_fibo
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    mask = (rng.random((40, 56)) > 0.5).astype(np.float32)
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    prompt = '{"edit_instruction": "make it red"}'
    assert main(["edit", "--checkpoint", str(_edit_folder(folder, tmp_path)), "--images", str(tmp_path / "image.png"),
                 "--mask", str(tmp_path / "mask.png"), "--prompt", prompt, "--steps", "2", "--seed", "3",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    ours = edit_image(fibo, Image.open(tmp_path / "image.png"), [prompt], mask=mask, steps=2, seed=3,
                      output_range="-1,1")
    assert ours.shape == (1, 3, 32, 64)
    save_images(ours, tmp_path / "expected", prefix="edit")
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == (tmp_path / "expected" / "edit_00000.png").read_bytes()
