"""GLIGEN (Li et al. 2023; diffkit.interop.gligen) on a tiny random StableDiffusionGLIGENPipeline folder against
diffusers' own pipeline: same prompts, phrases, boxes, z_T (``latents=``) and DDIM scheduler on both sides, compared
on the final latents (``output_type="latent"``). The tiny UNet is :func:`tiny_sd_components`' with
``attention_type="gated"``; its gates (alpha_attn, alpha_dense: 0 at init, so the fusers would add nothing) and the
position net's null features (0 at init) are drawn at random before ``save_pretrained``."""
import re
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.gligen import Grounding  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402

STEPS, SCALE = 4, 5.0
PROMPTS = ["a photo", "hot pot"]
PHRASES = ["a cat", "a dog"]
BOXES = [[0.1, 0.1, 0.5, 0.5], [0.5, 0.4, 0.9, 0.9]]


def gated_components(root, attention_type: str):
    """:func:`tiny_sd_components` with a UNet of ``attention_type``, its gates and null features drawn (seeded)."""
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, attention_type=attention_type)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")) or ".null_" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    return unet, vae, text_encoder, tokenizer


def tiny_gligen_pipeline(root):
    """A StableDiffusionGLIGENPipeline of :func:`gated_components` (``gated``), DDIM scheduler, no progress bar."""
    unet, vae, text_encoder, tokenizer = gated_components(root, "gated")
    return _pipeline(diffusers.StableDiffusionGLIGENPipeline, vae=vae, text_encoder=text_encoder,
                     tokenizer=tokenizer, unet=unet)


def _pipeline(cls, **components):
    """``cls`` (a deprecated GLIGEN pipeline: its notice silenced) with DDIM, no safety checker, no bar."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = cls(**components, scheduler=sd_ddim_scheduler(), safety_checker=None, feature_extractor=None,
                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_gligen(tmp_path_factory):
    """(pipeline, our loaded folder, folder path)."""
    root = tmp_path_factory.mktemp("tiny_gligen")
    pipe = tiny_gligen_pipeline(root)
    pipe.save_pretrained(root / "gligen")
    return pipe, load_stable_diffusion(root / "gligen", progress=False), root / "gligen"


def _latents(batch=2):
    return torch.randn((batch, 4, 8, 8), generator=torch.Generator().manual_seed(7))


def _theirs(pipe, latents, beta=0.3, phrases=PHRASES, boxes=BOXES, **options):
    with torch.no_grad():
        return pipe(PROMPTS, gligen_phrases=phrases, gligen_boxes=boxes, gligen_scheduled_sampling_beta=beta,
                    guidance_scale=SCALE, num_inference_steps=STEPS, latents=latents.clone(), eta=0.0,
                    output_type="latent", **options).images


def _ours(sd, latents, gligen, sampler="ddim", **options):
    return text_to_image(sd, PROMPTS, sampler=sampler, steps=STEPS, grid="scheduler", guidance_scale=SCALE,
                         latents=latents, return_latents=True, gligen=gligen, **({"eta": 0.0} if sampler == "ddim"
                                                                                  else {}), **options)


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
def test_gligen_matches_the_pipeline(tiny_gligen, beta):
    """StableDiffusionGLIGENPipeline (CFG s = 5, DDIM, 4 steps): beta 1 (every step grounded), 0.3 (the first
    int(4 beta) = 1 step; 0.5 in the multistep test), 0 (none)."""
    pipe, sd, _ = tiny_gligen
    latents = _latents()
    theirs = _theirs(pipe, latents, beta)
    ours = _ours(sd, latents, Grounding(PHRASES, BOXES, beta))
    assert relative_error(ours, theirs) < 1e-5
    plain = _ours(sd, latents, None)
    if beta > 0:  # the grounding matters
        assert relative_error(plain, theirs) > 1e-3
    else:
        assert torch.equal(plain, ours)


def test_multistep_solver_and_negative_prompt_match_the_pipeline(tiny_gligen):
    """dpm-solver++-2m on the grid of the pipeline's DPMSolverMultistepScheduler, beta 0.5, a negative prompt
    and one box: the grounded steps by time are the pipeline's step indices."""
    from diffkit.interop.schedulers import grid_from_diffusers
    pipe, sd, _ = tiny_gligen
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    saved, pipe.scheduler = pipe.scheduler, scheduler
    latents = _latents()
    try:
        theirs = _theirs(pipe, latents, 0.5, PHRASES[:1], BOXES[:1], negative_prompt=["ot"] * 2)
    finally:
        pipe.scheduler = saved
    ours = text_to_image(sd, PROMPTS, sampler="dpm-solver++-2m", grid=grid_from_diffusers(scheduler),
                         guidance_scale=SCALE, latents=latents, return_latents=True, negative_prompt="ot",
                         gligen=Grounding(PHRASES[:1], BOXES[:1], 0.5))
    assert relative_error(ours, theirs) < 1e-5


def test_rows_of_two_steps_are_grounded_apart(tiny_gligen):
    """A call whose rows sit at a grounded and an ungrounded step: each row as if called alone (the null row's
    masks 0 too)."""
    pipe, sd, _ = tiny_gligen
    grid = sd.scheduler_grid(STEPS)
    grounded = Grounding(PHRASES, BOXES, 0.5).grounding(sd, grid)
    net = grounded.network_denoiser.net
    x = _latents(2)
    context = sd.encode_prompts(PROMPTS)
    t, y = torch.stack([grid[0], grid[3]]).float(), torch.tensor([1, 0])
    both = net(x, t, y=y, context=context)
    for i in range(2):
        alone = net(x[i:i + 1], t[i:i + 1], y=y[i:i + 1], context=context[i:i + 1])
        assert torch.allclose(both[i:i + 1], alone, atol=1e-6)
    assert not torch.allclose(net(x[:1], t[:1], y=y[1:], context=context[:1]), both[:1])  # the mask of the null row


@pytest.mark.parametrize("phrases, boxes, beta, match", [
    (["a cat"], [[0.1, 0.1, 0.5]], 0.3, "gligen box [0.1, 0.1, 0.5] is not allowed"),
    (["a cat"], [[0.5, 0.1, 0.4, 0.6]], 0.3, "x0 < x1"),
    (["a cat"], [[0.1, 0.6, 0.4, 0.6]], 0.3, "y0 < y1"),
    (["a cat"], [[0.1, 0.1, 1.5, 0.6]], 0.3, "in [0, 1]"),
    (["a cat"], [["a", 0.1, 0.5, 0.6]], 0.3, "is not allowed"),
    (["a cat", "a dog"], [[0.1, 0.1, 0.5, 0.5]], 0.3, "2 gligen phrases for 1 boxes"),
    ([""], [[0.1, 0.1, 0.5, 0.5]], 0.3, "one non-empty phrase per box"),
    (["a"] * 31, [[0.1, 0.1, 0.5, 0.5]] * 31, 0.3, "31 gligen boxes are not allowed; at most 30"),
    (["a cat"], [[0.1, 0.1, 0.5, 0.5]], 1.5, "gligen beta"),
])
def test_bad_grounding_is_one_line(phrases, boxes, beta, match):
    with pytest.raises(DiffkitError, match=re.escape(match)) as err:
        Grounding(phrases, boxes, beta)
    assert "\n" not in str(err.value)


def test_grounding_refusals(tiny_gligen, tmp_path):
    """Options StableDiffusionGLIGENPipeline does not have, a plain SD UNet, GLIGEN inpainting UNets and unknown
    attention types: one line each."""
    import json
    import shutil
    pipe, sd, folder = tiny_gligen
    grounding = Grounding(PHRASES, BOXES)
    for options, match in (({"pag_scale": 2.0}, "with PAG"), ({"sag_scale": 0.5}, "with SAG"),
                           ({"panorama": True}, "with a panorama")):
        with pytest.raises(DiffkitError, match=re.escape(f"gligen grounding {match}")):
            text_to_image(sd, PROMPTS, steps=2, gligen=grounding, **options)
    with pytest.raises(DiffkitError, match="an LCM / TCD scheduler"):
        text_to_image(load_stable_diffusion(folder, progress=False, scheduler="lcm"), PROMPTS, steps=2,
                      gligen=grounding)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((folder / "unet" / "config.json").read_text())
    for changes, match in (({"attention_type": "gated-plus"}, "attention_type='gated-plus'; allowed"),
                           ({"in_channels": 9}, "is a GLIGEN inpainting UNet (in_channels=9")):
        (copy / "unet" / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(DiffkitError, match=re.escape(match)):
            load_stable_diffusion(copy, progress=False)
    from test_interop_diffusers import tiny_sd_pipeline
    plain = tiny_sd_pipeline(tmp_path)
    plain.save_pretrained(tmp_path / "sd")
    with pytest.raises(DiffkitError, match="needs a GLIGEN UNet"):
        text_to_image(load_stable_diffusion(tmp_path / "sd", progress=False), PROMPTS, steps=2, gligen=grounding)


def test_sample_command_with_gligen_is_text_to_image(tiny_gligen, tmp_path):
    """``diffkit sample --gligen-phrases ... --gligen-boxes ... --gligen-beta 0.5``: the PNGs of text_to_image with
    the same grounding, byte for byte (sample i from seed + i)."""
    from diffkit.images import save_images
    from test_t2i_adapter import _pngs_of
    pipe, sd, folder = tiny_gligen
    individual = tmp_path / "each"
    assert main([str(a) for a in (
        "sample", "--checkpoint", folder, "--prompt", "hot", "--num", "1", "--steps", "2", "--seed", "5",
        "--gligen-phrases", *PHRASES, "--gligen-boxes", "0.1,0.1,0.5,0.5", "0.5,0.4,0.9,0.9", "--gligen-beta", "0.5",
        "--out", tmp_path / "grid.png", "--individual", individual, "--no-progress")]) == 0
    images = text_to_image(sd, ["hot"], steps=2, seed=5, output_range="-1,1",
                           gligen=Grounding(PHRASES, BOXES, 0.5))
    save_images(images, tmp_path / "lib")
    assert torch.equal(_pngs_of(individual), _pngs_of(tmp_path / "lib"))


def test_bad_gligen_flags_are_one_line_before_any_output(tiny_gligen, tmp_path, capsys):
    from test_cli_errors import one_line_error
    pipe, sd, folder = tiny_gligen
    out = tmp_path / "new" / "grid.png"
    base = ["sample", "--checkpoint", folder, "--prompt", "hot", "--num", "1", "--steps", "2", "--out", out]
    ground = ["--gligen-phrases", "a cat", "--gligen-boxes", "0.1,0.1,0.5,0.5"]
    for extra, match in (
            ([], "is a GLIGEN folder (StableDiffusionGLIGENPipeline): give --gligen-phrases"),
            (["--gligen-phrases", "a cat", "--gligen-boxes", "0.1,0.1,0.5"], "--gligen-boxes '0.1,0.1,0.5'"),
            (["--gligen-phrases", "a cat", "--gligen-boxes", "0.6,0.1,0.5,0.5"], "x0 < x1"),
            (["--gligen-phrases", "a cat", "a dog", "--gligen-boxes", "0.1,0.1,0.5,0.5"], "2 gligen phrases for 1"),
            ([*ground, "--gligen-beta", "2"], "gligen beta"),
            ([*ground, "--pag-scale", "2"], "gligen grounding with --pag-scale is not supported"),
            ([*ground, "--scheduler", "lcm"], "gligen grounding with --scheduler")):
        line = one_line_error(capsys, *base, *extra)
        assert match in line, (extra, line)
        assert not out.parent.exists()
    line = one_line_error(capsys, *base[:2], tmp_path, *base[3:], *ground)
    assert "--gligen-phrases applies to a GLIGEN folder" in line


# --------------------------------------------------------------------------- StableDiffusionGLIGENTextImagePipeline
def tiny_gligen_text_image_pipeline(root):
    """A StableDiffusionGLIGENTextImagePipeline: a ``gated-text-image`` UNet (gates and null features drawn) with a
    tiny CLIP vision encoder (32 x 32, projection 32), its CLIPProcessor and a CLIPImageProjection."""
    transformers = pytest.importorskip("transformers")
    unet, vae, text_encoder, tokenizer = gated_components(root, "gated-text-image")
    torch.manual_seed(2)
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8))
    processor = transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    return _pipeline(diffusers.StableDiffusionGLIGENTextImagePipeline, vae=vae, text_encoder=text_encoder,
                     tokenizer=tokenizer, processor=processor, image_encoder=encoder,
                     image_project=diffusers.CLIPImageProjection(hidden_size=32), unet=unet)


@pytest.fixture(scope="module")
def tiny_gligen_text_image(tmp_path_factory):
    """(pipeline, our loaded folder, its image encoder, folder path, an object image's PNG)."""
    import numpy as np
    from PIL import Image
    from diffkit.interop.gligen import load_gligen_image_encoder
    root = tmp_path_factory.mktemp("tiny_gligen_text_image")
    pipe = tiny_gligen_text_image_pipeline(root)
    pipe.save_pretrained(root / "gligen")
    png = root / "object.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(png)
    return (pipe, load_stable_diffusion(root / "gligen", progress=False),
            load_gligen_image_encoder(root / "gligen", progress=False), root / "gligen", png)


@pytest.mark.parametrize("phrases, images", [(PHRASES, [None, "png"]), (None, ["png", "png"]), (PHRASES, None)])
def test_gligen_text_image_matches_the_pipeline(tiny_gligen_text_image, phrases, images):
    """StableDiffusionGLIGENTextImagePipeline (CFG s = 5, DDIM, 4 steps): a phrase and a phrase + image, images
    only, phrases only; its null half is the "without grounding" call (every mask 0) and its fusers stay on (beta
    1, the default on such a folder)."""
    from PIL import Image
    pipe, sd, encoder, _, png = tiny_gligen_text_image
    images = None if images is None else [None if i is None else png for i in images]
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, gligen_phrases=phrases, gligen_boxes=BOXES, guidance_scale=SCALE,
                      gligen_images=None if images is None else [i and Image.open(i) for i in images],
                      num_inference_steps=STEPS, latents=latents.clone(), eta=0.0, output_type="latent").images
    ours = _ours(sd, latents, Grounding(phrases, BOXES, images=images, image_encoder=encoder))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(_ours(sd, latents, None), theirs) > 1e-3


def test_sample_command_with_gligen_images_is_text_to_image(tiny_gligen_text_image, tmp_path):
    """``diffkit sample --gligen-images PNG PNG --gligen-boxes ...`` on a text-image folder: text_to_image's PNGs;
    a box without phrase or image, counts that differ, images without the image encoder: one line."""
    from diffkit.images import save_images
    from test_t2i_adapter import _pngs_of
    pipe, sd, encoder, folder, png = tiny_gligen_text_image
    individual = tmp_path / "each"
    assert main([str(a) for a in (
        "sample", "--checkpoint", folder, "--prompt", "hot", "--num", "1", "--steps", "2", "--seed", "5",
        "--gligen-images", png, png, "--gligen-boxes", "0.1,0.1,0.5,0.5", "0.5,0.4,0.9,0.9",
        "--out", tmp_path / "grid.png", "--individual", individual, "--no-progress")]) == 0
    images = text_to_image(sd, ["hot"], steps=2, seed=5, output_range="-1,1",
                           gligen=Grounding(None, BOXES, images=[png, png], image_encoder=encoder))
    save_images(images, tmp_path / "lib")
    assert torch.equal(_pngs_of(individual), _pngs_of(tmp_path / "lib"))
    with pytest.raises(DiffkitError, match="neither a phrase nor an image"):
        Grounding([None, "a dog"], BOXES, images=[None, png], image_encoder=encoder)
    with pytest.raises(DiffkitError, match="1 gligen images for 2 boxes"):
        Grounding(PHRASES, BOXES, images=[png], image_encoder=encoder)
    with pytest.raises(DiffkitError, match="need the folder's image encoder"):
        text_to_image(sd, ["hot"], steps=2, gligen=Grounding(PHRASES, BOXES, images=[png, png]))


def test_gligen_images_on_a_text_only_folder_are_one_line(tiny_gligen, tmp_path, capsys):
    from test_cli_errors import one_line_error
    pipe, sd, folder = tiny_gligen
    line = one_line_error(capsys, "sample", "--checkpoint", folder, "--prompt", "hot", "--gligen-phrases", "a cat",
                          "--gligen-images", folder / "model_index.json", "--gligen-boxes", "0.1,0.1,0.5,0.5",
                          "--out", tmp_path / "grid.png")
    assert "--gligen-images needs a text-image GLIGEN folder" in line
    with pytest.raises(DiffkitError, match="gligen images need a text-image GLIGEN folder"):
        text_to_image(sd, ["hot"], steps=2, gligen=Grounding(PHRASES[:1], BOXES[:1], images=["x.png"]))
