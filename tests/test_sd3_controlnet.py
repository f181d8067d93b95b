"""SD3 ControlNets (diffkit.interop.sd3_controlnet) against diffusers' StableDiffusion3ControlNetPipeline on the tiny
random SD3 folder of test_interop_sd3 and tiny random SD3ControlNetModels (every weight random, the zero-initialised
layers included, so the control changes the output); nothing downloaded."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.controlnet import ControlNets, load_model_folder  # noqa: E402
from diffkit.interop.sd3 import load_sd3, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import tiny_sd3_pipeline  # noqa: E402

PROMPT = ["a photo of a cat"]
KINDS = {"plain": {"force_zeros_for_pooled_projection": False},
         "instantx": {},  # force_zeros_for_pooled_projection=True (the default): zero pooled text, no VAE shift
         "sd35": {"joint_attention_dim": None, "use_pos_embed": False, "force_zeros_for_pooled_projection": False}}


def assert_sample_refusals(main, common: list, tmp_path, capsys, cases) -> None:
    """``diffkit sample --out NEW/o.png`` + ``common`` + each case's extra flags: exit 2, one stderr line matching
    its pattern, and no output folder left."""
    bad = tmp_path / "bad" / "o.png"
    for extra, match in cases:
        assert main(["sample", "--out", str(bad)] + common + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), err
        assert not bad.parent.exists()
    capsys.readouterr()


def randomised_zero_layers(model):
    """``model`` with its zero-initialised layers (ControlNet's zero convolutions) made random, so that it acts."""
    for p in model.parameters():
        if not p.any():
            p.data = torch.randn_like(p) * 0.05
    return model


def control_image_files(root) -> list:
    """Two random RGB control images, 24 x 20 and 16 x 16 (paths)."""
    from PIL import Image
    images = []
    for seed, size in ((0, (20, 24)), (1, (16, 16))):
        rgb = (np.random.default_rng(seed).random((*size, 3)) * 255).astype("uint8")
        Image.fromarray(rgb).save(root / f"control{seed}.png")
        images.append(root / f"control{seed}.png")
    return images


def tiny_sd3_controlnet(seed: int, **options):
    torch.manual_seed(seed)
    model = diffusers.SD3ControlNetModel(**{
        "sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 1,
        "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 32, "caption_projection_dim": 32,
        "pooled_projection_dim": 14, "pos_embed_max_size": 16, **options})
    return randomised_zero_layers(model)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, load_sd3 of it, {kind: ControlNet folder}, control image paths)."""
    root = tmp_path_factory.mktemp("sd3cn")
    tiny_sd3_pipeline(root, True).save_pretrained(root / "sd3")
    folders = {}
    for index, (kind, options) in enumerate(KINDS.items()):
        tiny_sd3_controlnet(3 + index, **options).save_pretrained(root / kind)
        folders[kind] = root / kind
    return root / "sd3", load_sd3(root / "sd3", progress=False), folders, control_image_files(root)


def _controlnet(folder):
    return load_model_folder("SD3ControlNetModel", folder, progress=False)


def _pipeline(sd3, controlnets, parts_of=None):
    """StableDiffusion3ControlNetPipeline of ``sd3``'s parts (or those of the pipeline ``parts_of``)."""
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
             "tokenizer_3")
    pipe = diffusers.StableDiffusion3ControlNetPipeline(
        **{name: getattr(parts_of or sd3, name) for name in parts}, controlnet=controlnets,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(sd3.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(batch=1):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("scale", [4.0, 1.0])
def test_sd3_controlnet_matches_the_pipeline(tiny, kind, scale):
    """The pipeline's latents with one ControlNet of each kind (context and pooled text; InstantX's zero pooled text
    and unshifted latents; SD3.5's single blocks without context and the transformer's position embedding), guided
    (s = 4: the null half's own control latents) and not, with its VAE posterior draw of the control image
    (torch.manual_seed(11) before the pipeline, control_seed=11 here)."""
    from PIL import Image
    _, sd3, folders, images = tiny
    image = Image.open(images[0])
    latents = _latents()
    pipe = _pipeline(sd3, _controlnet(folders[kind]))  # (which draws from the global generator for "sd35")
    torch.manual_seed(11)
    with torch.no_grad():
        theirs = pipe(
            PROMPT, control_image=image, num_inference_steps=4, guidance_scale=scale, latents=latents.clone(),
            output_type="latent", max_sequence_length=12, controlnet_conditioning_scale=0.7).images
    control = ControlNets([_controlnet(folders[kind])], [images[0]], 0.7)
    ours = text_to_image(sd3, PROMPT, steps=4, guidance_scale=scale, latents=latents, max_sequence_length=12,
                         return_latents=True, controlnet=control, control_seed=11)
    plain = text_to_image(sd3, PROMPT, steps=4, guidance_scale=scale, latents=latents, max_sequence_length=12,
                          return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(plain, theirs) > 0.1  # the ControlNet acts
    mean = text_to_image(sd3, PROMPT, steps=4, guidance_scale=scale, latents=latents, max_sequence_length=12,
                         return_latents=True, controlnet=control, control_posterior="mean")
    assert relative_error(mean, theirs) > 1e-4  # the posterior's draw is the pipeline's


def test_multi_controlnet_window_and_batch_match_the_pipeline(tiny, monkeypatch):
    """Two prompts, two ControlNets (scales 0.7 and 1.2; windows [0, 0.5] and [0.25, 1]) and a negative prompt: the
    pipeline's SD3MultiControlNetModel, with its posterior draws replaced by the mean (control_posterior="mean";
    the pipeline draws the whole batch from one generator, diffkit per sample)."""
    _, sd3, folders, images = tiny
    monkeypatch.setattr(diffusers.models.autoencoders.vae.DiagonalGaussianDistribution, "sample",
                        lambda self, generator=None: self.mean)
    prompts, latents = ["a photo of a cat", "hot dog"], _latents(2)
    options = dict(num_inference_steps=4, guidance_scale=3.0, latents=latents.clone(), output_type="latent",
                   max_sequence_length=12, negative_prompt="ugly")
    from PIL import Image
    with torch.no_grad():
        theirs = _pipeline(sd3, [_controlnet(folders["plain"]), _controlnet(folders["plain"])])(
            prompts, control_image=[Image.open(images[0]), Image.open(images[1])],
            controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.25],
            control_guidance_end=[0.5, 1.0], **options).images
    control = ControlNets([_controlnet(folders["plain"])] * 2, images, [0.7, 1.2], [0.0, 0.25], [0.5, 1.0])
    ours = text_to_image(sd3, prompts, steps=4, guidance_scale=3.0, latents=latents, max_sequence_length=12,
                         negative_prompt="ugly", return_latents=True, controlnet=control, control_posterior="mean")
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    always = ControlNets([_controlnet(folders["plain"])] * 2, images, [0.7, 1.2])
    unwindowed = text_to_image(sd3, prompts, steps=4, guidance_scale=3.0, latents=latents, max_sequence_length=12,
                               negative_prompt="ugly", return_latents=True, controlnet=always,
                               control_posterior="mean")
    assert relative_error(unwindowed, theirs) > 1e-3  # the windows act


def test_one_control_image_per_prompt_matches_the_pipeline(tiny, monkeypatch):
    """A list of control images, one per prompt (the pipeline's image batch; posterior mean on both sides, as the
    pipeline draws the batch from one generator): each sample takes its prompt's image."""
    from PIL import Image
    _, sd3, folders, images = tiny
    monkeypatch.setattr(diffusers.models.autoencoders.vae.DiagonalGaussianDistribution, "sample",
                        lambda self, generator=None: self.mean)
    prompts, latents = ["a photo of a cat", "hot dog"], _latents(2)
    with torch.no_grad():
        theirs = _pipeline(sd3, _controlnet(folders["plain"]))(
            prompts, control_image=[Image.open(image) for image in images], num_inference_steps=3,
            guidance_scale=3.0, latents=latents.clone(), output_type="latent", max_sequence_length=12).images
    kw = dict(steps=3, guidance_scale=3.0, latents=latents, max_sequence_length=12, return_latents=True,
              control_posterior="mean")
    ours = text_to_image(sd3, prompts, controlnet=ControlNets([_controlnet(folders["plain"])], [images]), **kw)
    print("sd3 per prompt", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    swapped = text_to_image(sd3, prompts, controlnet=ControlNets([_controlnet(folders["plain"])], [images]),
                            control_rows=[1, 0], **kw)
    assert relative_error(swapped, theirs) > 1e-3


def test_sd3_controlnet_with_a_lora_matches_the_pipeline(tiny, tmp_path):
    """load_sd3(lora=[(file, 0.7)]) with a ControlNet: the pipeline after load_lora_weights + fuse_lora(0.7) (its
    LoRA loader adapts the transformer and text encoders, never the ControlNet)."""
    pytest.importorskip("peft")
    from test_interop_sd3_edit import SD3_LORA
    from test_sd_lora import fused_transformer_lora
    folder, sd3, folders, images = tiny
    lora, fused = fused_transformer_lora(diffusers.StableDiffusion3Pipeline, folder, tmp_path, SD3_LORA,
                                         "text_encoder_2")
    pipe = _pipeline(sd3, _controlnet(folders["plain"]), fused)
    latents = _latents()
    torch.manual_seed(11)
    from PIL import Image
    with torch.no_grad():
        theirs = pipe(PROMPT, control_image=Image.open(images[0]), num_inference_steps=3, guidance_scale=4.0,
                      latents=latents.clone(), output_type="latent", max_sequence_length=12).images
    merged = load_sd3(folder, progress=False, lora=[(lora, 0.7)])
    ours = text_to_image(merged, PROMPT, steps=3, guidance_scale=4.0, latents=latents, max_sequence_length=12,
                         return_latents=True, controlnet=ControlNets([_controlnet(folders["plain"])], images[:1]),
                         control_seed=11)
    print("sd3 controlnet lora", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    unmerged = text_to_image(sd3, PROMPT, steps=3, guidance_scale=4.0, latents=latents, max_sequence_length=12,
                             return_latents=True, controlnet=ControlNets([_controlnet(folders["plain"])], images[:1]),
                             control_seed=11)
    assert relative_error(unmerged, theirs) > 1e-3  # the LoRA acts


def test_other_samplers_run_with_a_controlnet(tiny):
    """Any diffkit sampler runs the controlled transformer on its own grid of the flow schedule: 8 steps of UniPC
    and DPM-Solver++(2M) land near the pipeline loop's 16 steps (measured 2.0% and 3.4% against 19.7% for the
    uncontrolled run); a window is counted on the sampler's grid; with an adaptive sampler it is refused."""
    _, sd3, folders, images = tiny
    control = ControlNets([_controlnet(folders["plain"])], [images[0]], 0.7)
    kw = dict(latents=_latents(), max_sequence_length=12, return_latents=True, control_posterior="mean")
    reference = text_to_image(sd3, PROMPT, steps=16, controlnet=control, **kw)
    assert relative_error(text_to_image(sd3, PROMPT, steps=16, **kw), reference) > 0.1
    for sampler in ("unipc", "dpm-solver++-2m"):
        ours = text_to_image(sd3, PROMPT, sampler=sampler, steps=8, controlnet=control, **kw)
        assert relative_error(ours, reference) < 0.05, (sampler, relative_error(ours, reference))
    windowed = ControlNets([_controlnet(folders["plain"])], [images[0]], 0.7, 0.0, 0.5)
    half = text_to_image(sd3, PROMPT, sampler="unipc", steps=8, controlnet=windowed, **kw)
    assert relative_error(half, ours) > 1e-3  # the window acts (ours: the last, UniPC, controlled throughout)
    with pytest.raises(DiffkitError, match="picks its own steps"):
        text_to_image(sd3, PROMPT, sampler="dpm-adaptive", latents=_latents(), max_sequence_length=12,
                      controlnet=windowed)


def test_sample_command_runs_sd3_controlnet(tiny, tmp_path, capsys):
    """`diffkit sample --controlnet DIR --control-image PNG` on an SD3 folder writes text_to_image's images byte for
    byte (sample i's control latents from --seed + i), and refuses what it does not support in one line."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    folder, sd3, folders, images = tiny
    out = tmp_path / "grid.png"
    common = ["--checkpoint", str(folder), "--prompt", PROMPT[0], "--num", "2", "--nrow", "1", "--steps", "3",
              "--seed", "5", "--batch-size", "2", "--no-progress", "--controlnet", str(folders["plain"]),
              "--control-image", str(images[0])]
    assert main(["sample", "--out", str(out), "--controlnet-scale", "0.6", "--control-guidance-end", "0.7"]
                + common) == 0
    control = ControlNets([_controlnet(folders["plain"])], [images[0]], 0.6, 0.0, 0.7)
    expected = text_to_image(sd3, PROMPT * 2, steps=3, seed=5, controlnet=control, control_seed=5,
                             output_range="-1,1")
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    per_prompt = tmp_path / "per_prompt"  # --control-image DIR: one per --prompt, in file-name order
    per_prompt.mkdir()
    for index, image in enumerate(images):
        (per_prompt / f"{index}.png").write_bytes(image.read_bytes())
    two = ["sample", "--out", str(tmp_path / "two.png"), "--checkpoint", str(folder), "--prompt", PROMPT[0],
           "--prompt", "hot dog", "--num", "2", "--nrow", "1", "--steps", "2", "--seed", "5", "--batch-size", "2",
           "--no-progress", "--controlnet", str(folders["plain"]), "--control-image", str(per_prompt)]
    assert main(two) == 0
    expected = text_to_image(sd3, [PROMPT[0], "hot dog"], steps=2, seed=5, output_range="-1,1", control_seed=5,
                             controlnet=ControlNets([_controlnet(folders["plain"])], [images]))
    save_grid(expected, tmp_path / "expected.png", 1)
    assert (tmp_path / "two.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, common, tmp_path, capsys, (
        (["--guess-mode"], "--guess-mode applies to Stable Diffusion ControlNets"),
        (["--controlnet", str(folder / "transformer"), "--control-image", str(images[0])],
         "holds a 'SD3Transformer2DModel'; allowed: a diffusers SD3ControlNetModel folder"),
        (["--controlnet", str(folders["plain"]), "--control-image", str(per_prompt)],
         "--control-image .*per_prompt holds 2 PNG\\(s\\) for 1 --prompt")))


def test_scale_zero_is_the_folder_alone_bit_for_bit(tiny):
    """A ControlNet at scale 0 is never called: the guided run is the one without it, bit for bit (and so the
    transformer's new ``controls`` argument, None, changes nothing)."""
    _, sd3, folders, images = tiny
    kw = dict(steps=3, guidance_scale=4.0, latents=_latents(), max_sequence_length=12, return_latents=True)
    off = ControlNets([_controlnet(folders["plain"])], images[:1], 0.0)
    assert torch.equal(text_to_image(sd3, PROMPT, controlnet=off, **kw), text_to_image(sd3, PROMPT, **kw))


def test_mismatched_controlnets_are_refused(tiny):
    """A ControlNet of another patch size, or two that disagree on what the pipeline takes from the first: one
    line naming the key."""
    _, sd3, folders, images = tiny
    other = tiny_sd3_controlnet(0, patch_size=1, pos_embed_max_size=16, force_zeros_for_pooled_projection=False)
    for models, match in (([other], "--controlnet number 1 has patch_size=1 but this SD3 folder needs 2"),
                          ([_controlnet(folders["plain"]), _controlnet(folders["instantx"])],
                           "number 2 has force_zeros_for_pooled_projection=True but --controlnet number 1 False")):
        with pytest.raises(DiffkitError, match=match):
            text_to_image(sd3, PROMPT, steps=2, latents=_latents(), max_sequence_length=12,
                          controlnet=ControlNets(models, [images[0]] * len(models)))
    with pytest.raises(DiffkitError, match="skip-layer guidance with a ControlNet is not supported"):
        text_to_image(sd3, PROMPT, steps=2, latents=_latents(), max_sequence_length=12, skip_guidance_layers=[0],
                      controlnet=ControlNets([_controlnet(folders["plain"])], [images[0]]))
