"""Kandinsky 2.2 folders (diffkit.interop.kandinsky): the prior (``prior_embeddings`` on a KandinskyV22PriorPipeline
folder) and the decoder (``decode_embeddings`` on a KandinskyV22Pipeline folder) against diffusers' own pipelines
on tiny random folders (tests/_kandinsky_helpers.py; nothing downloaded), each step's noise drawn from the same
per-row generators; ``diffkit sample --checkpoint DECODER --prior PRIOR`` on them (the library's output byte for
byte; flags that do not apply: one line)."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.kandinsky import (decode_embeddings, decoder_sampler, load_decoder, load_prior,  # noqa: E402
                                       prior_embeddings, prior_sampler)
from diffkit.noise import generators_from_seed  # noqa: E402

from _kandinsky_helpers import tiny_decoder_pipeline, tiny_prior_pipeline  # noqa: E402
from _pixart_helpers import edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """(prior pipeline, prior folder, KandinskyPrior, decoder pipeline, decoder folder, KandinskyDecoder), each
    pipeline loaded from its folder."""
    root = tmp_path_factory.mktemp("kandinsky")
    tiny_prior_pipeline(root).save_pretrained(root / "prior")
    tiny_decoder_pipeline().save_pretrained(root / "decoder")
    prior = diffusers.KandinskyV22PriorPipeline.from_pretrained(root / "prior", local_files_only=True)
    decoder = diffusers.KandinskyV22Pipeline.from_pretrained(root / "decoder", local_files_only=True)
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    return (prior, root / "prior", load_prior(root / "prior", progress=False),
            decoder, root / "decoder", load_decoder(root / "decoder", progress=False))


def prior_pair(folders, steps=3, negative_prompt=None, **call):
    """(diffusers', diffkit's) (image_embeds, negative_image_embeds), generators seed 7 + i."""
    pipe, _, model = folders[:3]
    rows = len(PROMPTS) * (1 if negative_prompt is None else 2)
    gens = generators_from_seed(7, len(PROMPTS)) * (rows // len(PROMPTS))
    with torch.no_grad():
        out = pipe(PROMPTS, negative_prompt=negative_prompt, num_inference_steps=steps,
                   generator=[torch.Generator().manual_seed(g.initial_seed()) for g in gens], **call)
    ours = prior_embeddings(model, PROMPTS, negative_prompt=negative_prompt, steps=steps, seed=7,
                            guidance_scale=call.get("guidance_scale"))
    return (out.image_embeds, out.negative_image_embeds), ours


@pytest.mark.parametrize("case", [{}, {"negative_prompt": ["blurry", "dark"], "guidance_scale": 3.0},
                                  {"guidance_scale": 1.0}])
def test_prior_matches_pipeline(folders, case):
    theirs, ours = prior_pair(folders, **case)
    for a, b in zip(theirs, ours):
        assert a.shape == b.shape
        assert relative_error(b, a) < 1e-5, relative_error(b, a)


@pytest.mark.parametrize("change", [{}, {"variance_type": "fixed_small"},
                                    {"_class_name": "DDIMScheduler", "set_alpha_to_one": False,
                                     "variance_type": None}])
def test_decoder_matches_pipeline(folders, tmp_path, change):
    """The decoder's latents (output_type="latent") from the prior's embeddings: its DDPMScheduler with the learned
    variance (and the last step's noise, last_step_noise), with fixed_small, and a DDIMScheduler folder."""
    (embeds, negative), _ = prior_pair(folders)
    folder = folders[4] if not change else edited_copy(folders[4], tmp_path / "decoder",
                                                       "scheduler/scheduler_config.json", change)
    if "_class_name" in change:  # the class diffusers loads: model_index.json's
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers",
                                                                                    change["_class_name"]]}))
    pipe = diffusers.KandinskyV22Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    model = load_decoder(folder, progress=False)
    with torch.no_grad():
        theirs = pipe(image_embeds=embeds, negative_image_embeds=negative, height=16, width=16, num_inference_steps=3,
                      output_type="latent", generator=generators_from_seed(7, 2)).images
        images = pipe.movq.decode(theirs, force_not_quantize=True).sample
    ours = decode_embeddings(model, embeds, negative, height=16, width=16, steps=3, seed=7, return_latents=True)
    assert ours.shape == theirs.shape == (2, 4, 8, 8)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(model.decode(theirs), images) < 1e-6  # the MoVQ decode (the images' difference: docs)

def test_cli_sample_matches_library(folders, tmp_path, capsys):
    """diffkit sample --checkpoint DECODER --prior PRIOR: each image the library's (prior seed + i, decoder seed
    + i), written byte for byte as the grid's PNG; the negative prompt's rows from the same seeds."""
    import numpy as np
    from PIL import Image

    from diffkit.interop.kandinsky import text_to_image
    _, prior_folder, prior, _, folder, decoder = folders
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prior", str(prior_folder), "--prompt", PROMPTS[0],
                 "--prompt", PROMPTS[1], "--negative-prompt", "dark", "--guidance-scale", "3",
                 "--guidance-convention", "diffusers", "--prior-steps", "2", "--steps", "2", "--height", "16",
                 "--width", "16", "--seed", "5", "--num", "2", "--nrow", "2", "--no-progress", "--out", str(out),
                 "--individual", str(tmp_path / "each")]) == 0
    assert "Kandinsky 2.2 decoder" in capsys.readouterr().out
    ours = text_to_image(prior, decoder, PROMPTS, negative_prompt="dark", prior_steps=2, steps=2, height=16,
                         width=16, guidance_scale=3.0, seed=5)
    for i in range(2):
        written = np.asarray(Image.open(sorted((tmp_path / "each").iterdir())[i])).astype(np.float32) / 255
        assert np.abs(written - ours[i].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_refusals(folders, tmp_path, capsys):
    """What diffkit does not drive: one line, before any weight is read or any file written."""
    from _pixart_helpers import assert_sample_refusals
    prior_folder, folder = folders[1], folders[4]
    p = ["--prior", str(prior_folder)]
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        ([], "is a Kandinsky 2.2 decoder folder (KandinskyV22Pipeline): give --prior FOLDER"),  # RKD1
        (["--prior", str(folder)], "is not a KandinskyV22PriorPipeline folder (it is a KandinskyV22Pipeline folder: "
                                   "give it as --checkpoint)"),  # RKD2
        (p + ["--prior-steps", "1"], "--prior-steps 1 is not allowed; give at least 2"),  # RKD3
        (p + ["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Kandinsky 2.2 decoder folder"),
        (p + ["--max-sequence-length", "8"], "--max-sequence-length applies to an SD3 folder"),
        (p + ["--height", "18"], "--height 18 is not allowed"),  # RKD4: multiples of f^2
    ])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(prior_folder), "--prompt", "hot", "--out",
                 str(tmp_path / "never.png")]) == 2
    assert "is a Kandinsky 2.2 prior folder: give it as --prior" in capsys.readouterr().err  # RKD5
    bad = edited_copy(prior_folder, tmp_path / "learned", "scheduler/scheduler_config.json",
                      {"variance_type": "learned_range"})
    with pytest.raises(DiffkitError, match="allowed: an UnCLIPScheduler with variance_type 'fixed_small_log'"):
        load_prior(bad)  # RKD6
    bad = edited_copy(folders[4], tmp_path / "text", "unet/config.json", {"addition_embed_type": "text"})
    with pytest.raises(DiffkitError, match="addition_embed_type='text'; allowed: 'image'"):
        load_decoder(bad)  # RKD7
    with pytest.raises(DiffkitError, match="allowed: a DDPMScheduler with variance_type 'fixed_small' or"):
        decoder_sampler({"_class_name": "EulerDiscreteScheduler"})  # RKD8
    with pytest.raises(DiffkitError, match="steps=1 is not allowed; give an integer >= 2"):
        prior_embeddings(folders[2], "hot", steps=1)
    assert prior_sampler({"_class_name": "UnCLIPScheduler", "clip_sample_range": 10.0}) == (
        "ddpm", {"variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 10.0})
    with pytest.raises(DiffkitError, match="give 4 generators"):
        prior_embeddings(folders[2], PROMPTS, negative_prompt="dark", generator=generators_from_seed(0, 2))


def test_img2img_matches_pipeline(folders):
    """image_to_image: KandinskyV22Img2ImgPipeline's latents (strength 0.6 of 5 steps: 3 kept) from the same
    per-row generators; the images given in [0, 1] to the pipeline (its preprocessing makes them 2x - 1)."""
    from diffkit.interop.kandinsky import image_to_image
    _, _, _, pipe, _, model = folders
    (embeds, negative), _ = prior_pair(folders)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    img2img = diffusers.KandinskyV22Img2ImgPipeline(unet=pipe.unet, scheduler=pipe.scheduler, movq=pipe.movq)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img(image=images, image_embeds=embeds, negative_image_embeds=negative, height=16, width=16,
                         strength=0.6, num_inference_steps=5, output_type="latent",
                         generator=generators_from_seed(7, 2)).images
    ours = image_to_image(model, images * 2 - 1, embeds, negative, strength=0.6, steps=5, seed=7,
                          return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    with pytest.raises(DiffkitError, match="strength=0 is not allowed"):
        image_to_image(model, images, embeds, negative, strength=0)


def test_cli_edit_matches_library(folders, tmp_path, capsys):
    """diffkit edit --checkpoint DECODER --prior PRIOR --images DIR: each PNG the library's image_to_image of the
    prior's embeddings (both from seed + i); its refusals in one line, no folder made."""
    import numpy as np
    from PIL import Image

    from diffkit.interop.kandinsky import image_to_image
    _, prior_folder, prior, _, folder, decoder = folders
    pngs = tmp_path / "in"
    pngs.mkdir()
    pixels = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        Image.fromarray((pixels[i].numpy() * 255).round().astype(np.uint8)).save(pngs / f"{i}.png")
    base = ["edit", "--checkpoint", str(folder), "--images", str(pngs), "--prompt", PROMPTS[0], "--prompt",
            PROMPTS[1], "--no-progress"]
    for extra, expected in [([], "give --prior FOLDER"),  # RKD1
                            (["--prior", str(prior_folder), "--mask", str(pngs / "0.png")],
                             "--mask does not apply to a Kandinsky 2.2 decoder folder whose UNet"),  # RKD10
                            (["--prior", str(prior_folder), "--prior-steps", "1"], "--prior-steps 1 is not allowed")]:
        capsys.readouterr()
        assert main(base + extra + ["--out", str(tmp_path / "never")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never").exists()
    out = tmp_path / "out"
    assert main(base + ["--prior", str(prior_folder), "--prior-steps", "2", "--steps", "4", "--strength", "0.5",
                        "--guidance-scale", "3", "--guidance-convention", "diffusers", "--seed", "5",
                        "--out", str(out)]) == 0
    read = torch.from_numpy(np.stack([np.asarray(Image.open(pngs / f"{i}.png")) for i in range(2)]))
    images = read.permute(0, 3, 1, 2).float() / 127.5 - 1
    ours = []
    for i in range(2):
        embeds, negative = prior_embeddings(prior, PROMPTS[i], steps=2, seed=5 + i)
        ours.append(image_to_image(decoder, images[i:i + 1], embeds, negative, strength=0.5, steps=4,
                                   guidance_scale=3.0, seed=5 + i))
    for i, image in enumerate(torch.cat(ours)):
        written = np.asarray(Image.open(out / f"edit_{i:05d}.png")).astype(np.float32) / 255
        assert np.abs(written - image.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.fixture(scope="session")
def inpaint_folder(tmp_path_factory):
    """(KandinskyV22InpaintPipeline, its folder, KandinskyDecoder): a 9-channel UNet (latents, masked-image latents,
    mask) with a learned variance."""
    root = tmp_path_factory.mktemp("kandinsky_inpaint")
    tiny_decoder_pipeline(inpaint=True).save_pretrained(root / "inpaint")
    pipe = diffusers.KandinskyV22InpaintPipeline.from_pretrained(root / "inpaint", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "inpaint", load_decoder(root / "inpaint", progress=False)


def inpaint_inputs():
    """(image embeddings, negative ones, an image in [-1, 1], its mask: 1 = repaint, a block)."""
    g = torch.Generator().manual_seed(3)
    embeds, negative = torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 2:9, 4:12] = 1
    return embeds, negative, torch.rand(1, 3, 16, 16, generator=g) * 2 - 1, mask


@pytest.mark.parametrize("steps", [3, 4])
def test_inpaint_matches_pipeline(inpaint_folder, steps):
    """kandinsky_inpaint.inpaint: KandinskyV22InpaintPipeline's latents (the inverted, eroded mask; the masked-image
    latents; the kept region blended back after every step and at the end) from the same generator."""
    from diffkit.interop.kandinsky_inpaint import erode_keep, inpaint
    pipe, _, model = inpaint_folder
    embeds, negative, image, mask = inpaint_inputs()
    with torch.no_grad():
        theirs = pipe(image_embeds=embeds, image=image, mask_image=mask.clone(), negative_image_embeds=negative,
                      height=16, width=16, num_inference_steps=steps, output_type="latent",
                      generator=generators_from_seed(7, 1)).images
    ours = inpaint(model, image, mask, embeds, negative, steps=steps, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    keep = erode_keep(1 - torch.nn.functional.interpolate(mask, (8, 8)))  # the kept cells: the image's latents
    assert torch.equal(ours * keep, model.movq.encode(image).latents * keep)


def test_inpaint_refusals(folders, inpaint_folder, tmp_path):
    """A 4-channel decoder does not inpaint (RKD11); a KandinskyV22InpaintPipeline folder whose UNet takes 4 channels
    and a KandinskyV22Pipeline folder whose UNet takes 9 (RKD12); the 9-channel UNet without its mask."""
    from diffkit.interop.kandinsky_inpaint import inpaint
    embeds, negative, image, mask = inpaint_inputs()
    with pytest.raises(DiffkitError, match="a KandinskyV22Pipeline decoder does not inpaint"):
        inpaint(folders[5], image, mask, embeds, negative, steps=2)  # RKD11
    bad = edited_copy(inpaint_folder[1], tmp_path / "four", "unet/config.json", {"in_channels": 4})
    with pytest.raises(DiffkitError, match="KandinskyV22InpaintPipeline folder whose UNet has in_channels=4"):
        load_decoder(bad)  # RKD12
    bad = edited_copy(folders[4], tmp_path / "nine", "unet/config.json", {"in_channels": 9})
    with pytest.raises(DiffkitError, match="KandinskyV22Pipeline folder whose UNet has in_channels=9"):
        load_decoder(bad)
    with pytest.raises(DiffkitError, match="mask of shape"):
        inpaint(inpaint_folder[2], image, mask[..., :8], embeds, negative, steps=2)
    with pytest.raises(DiffkitError, match="a Kandinsky 2.2 inpainting decoder"):
        decode_embeddings(inpaint_folder[2], embeds, negative, height=16, width=16, steps=2)


def test_cli_inpaint_matches_library(folders, inpaint_folder, tmp_path, capsys):
    """diffkit edit --checkpoint INPAINT_DECODER --prior PRIOR --images DIR --mask PNG: each PNG the library's
    inpaint of the prior's embeddings (both from seed + i); its refusals in one line, no folder made."""
    import numpy as np
    from PIL import Image

    from diffkit.interop.kandinsky_inpaint import inpaint
    prior_folder, prior, folder = folders[1], folders[2], inpaint_folder[1]
    pngs = tmp_path / "in"
    pngs.mkdir()
    pixels = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(4))
    for i in range(2):
        Image.fromarray((pixels[i].numpy() * 255).round().astype(np.uint8)).save(pngs / f"{i}.png")
    mask = inpaint_inputs()[3]
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    base = ["edit", "--checkpoint", str(folder), "--images", str(pngs), "--prompt", PROMPTS[0], "--no-progress",
            "--prior", str(prior_folder)]
    m = ["--mask", str(tmp_path / "mask.png")]
    for args, expected in [(base, "is a KandinskyV22InpaintPipeline folder: it only inpaints; give --mask"),  # RKD13
                           (base + m + ["--strength", "0.5"], "--strength does not apply to a Kandinsky 2.2"),
                           (["sample", "--checkpoint", str(folder), "--prior", str(prior_folder), "--prompt", "a"],
                            "it only inpaints; use diffkit edit")]:  # RKD14
        capsys.readouterr()
        assert main(args + ["--out", str(tmp_path / ("never" if args[0] == "edit" else "never.png"))]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)
    assert not (tmp_path / "never").exists()
    out = tmp_path / "out"
    assert main(base + m + ["--prior-steps", "2", "--steps", "3", "--guidance-scale", "3", "--guidance-convention",
                            "diffusers", "--seed", "5", "--out", str(out)]) == 0
    assert "as KandinskyV22InpaintPipeline" in capsys.readouterr().out
    read = torch.from_numpy(np.stack([np.asarray(Image.open(pngs / f"{i}.png")) for i in range(2)]))
    images = read.permute(0, 3, 1, 2).float() / 127.5 - 1
    embeds, negative = prior_embeddings(prior, [PROMPTS[0]] * 2, steps=2, seed=5)
    ours = inpaint(inpaint_folder[2], images, mask, embeds, negative, steps=3, guidance_scale=3.0, seed=5)
    for i in range(2):
        written = np.asarray(Image.open(out / f"edit_{i:05d}.png")).astype(np.float32) / 255
        assert np.abs(written - ours[i].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.fixture(scope="session")
def hint_folder(tmp_path_factory):
    """(KandinskyV22ControlnetPipeline, its folder, KandinskyDecoder): a UNet with addition_embed_type "image_hint"
    (4 + 4 channels in, learned variance), hints of 64 x 64 (8x the 8 x 8 latents)."""
    root = tmp_path_factory.mktemp("kandinsky_controlnet")
    tiny_decoder_pipeline(hint=True).save_pretrained(root / "controlnet")
    pipe = diffusers.KandinskyV22ControlnetPipeline.from_pretrained(root / "controlnet", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "controlnet", load_decoder(root / "controlnet", progress=False)


def hint_inputs(rows=2):
    """(image embeddings, negative ones, hints in [0, 1] (rows, 3, 64, 64), images in [0, 1] (rows, 3, 16, 16))."""
    g = torch.Generator().manual_seed(3)
    return (torch.randn(rows, 16, generator=g), torch.randn(rows, 16, generator=g),
            torch.rand(rows, 3, 64, 64, generator=g), torch.rand(rows, 3, 16, 16, generator=g))


@pytest.mark.parametrize("img2img", [False, True])
def test_controlnet_matches_pipeline(hint_folder, img2img):
    """decode_embeddings / image_to_image with hint=: KandinskyV22ControlnetPipeline's and
    KandinskyV22ControlnetImg2ImgPipeline's final latents (their callback's: no "latent" output; 3 steps; strength
    0.5 of 4) and "pt" images, from the same per-row generators."""
    from diffkit.interop.kandinsky import image_to_image
    pipe, _, model = hint_folder
    embeds, negative, hint, images = hint_inputs()
    last = {}
    call = {"image_embeds": embeds, "negative_image_embeds": negative, "hint": hint, "height": 16, "width": 16,
            "output_type": "pt", "generator": generators_from_seed(7, 2), "callback": lambda i, t, z: last.update(z=z)}
    with torch.no_grad():
        if img2img:
            pipe = diffusers.KandinskyV22ControlnetImg2ImgPipeline(unet=pipe.unet, scheduler=pipe.scheduler,
                                                                   movq=pipe.movq)
            pipe.set_progress_bar_config(disable=True)
            theirs = pipe(image=images, strength=0.5, num_inference_steps=4, **call).images
        else:
            theirs = pipe(num_inference_steps=3, **call).images
    ours = image_to_image(model, images * 2 - 1, embeds, negative, hint=hint, strength=0.5, steps=4, seed=7,
                          return_latents=True) if img2img else \
        decode_embeddings(model, embeds, negative, hint=hint, height=16, width=16, steps=3, seed=7, return_latents=True)
    assert ours.shape == last["z"].shape == (2, 4, 8, 8)
    assert relative_error(ours, last["z"]) < 1e-5, relative_error(ours, last["z"])
    decoded = model.decode(ours)  # the img2img pipeline's "pt" is postprocessed to [0, 1], the other's is not
    decoded = (decoded / 2 + 0.5).clamp(0, 1) if img2img else decoded
    assert relative_error(decoded, theirs) < 1e-5, relative_error(decoded, theirs)


def test_controlnet_refusals(folders, hint_folder, tmp_path):
    """A hint for a plain decoder, none for an image-hint one, a hint of another size; a KandinskyV22ControlnetPipeline
    folder whose UNet takes no hint; a UNet of another addition_embed_type."""
    embeds, negative, hint, _ = hint_inputs(1)
    with pytest.raises(DiffkitError, match="a hint \\(control image\\) does not apply to a KandinskyV22Pipeline"):
        decode_embeddings(folders[5], embeds, negative, hint=hint, height=16, width=16, steps=2)  # RKD15
    with pytest.raises(DiffkitError, match="addition_embed_type='image_hint' \\(KandinskyV22ControlnetPipeline\\): "
                                           "give a hint"):
        decode_embeddings(hint_folder[2], embeds, negative, height=16, width=16, steps=2)  # RKD16
    with pytest.raises(DiffkitError, match="hint of shape \\(1, 3, 16, 16\\) is not allowed; give \\(1, 3, 64, 64\\)"):
        decode_embeddings(hint_folder[2], embeds, negative, hint=hint[..., :16, :16], height=16, width=16, steps=2)
    bad = edited_copy(hint_folder[1], tmp_path / "image", "unet/config.json", {"addition_embed_type": "image"})
    with pytest.raises(DiffkitError, match="is a KandinskyV22ControlnetPipeline folder whose UNet has "
                                           "addition_embed_type='image'; allowed: 'image_hint'"):
        load_decoder(bad)  # RKD17
    bad = edited_copy(hint_folder[1], tmp_path / "text", "unet/config.json", {"addition_embed_type": "text"})
    with pytest.raises(DiffkitError, match="allowed: 'image' .* or 'image_hint'"):
        load_decoder(bad)  # RKD7


def test_cli_controlnet_matches_library(folders, hint_folder, tmp_path, capsys):
    """diffkit sample / edit --checkpoint CONTROLNET_DECODER --prior PRIOR --control-image PNG: the PNGs the library's
    (decode_embeddings / image_to_image with the hint, prior and decoder from seed + i); --control-image on a plain
    decoder and none on a ControlNet one: one line, no file."""
    import numpy as np
    from PIL import Image

    from diffkit.interop.kandinsky import image_to_image
    prior_folder, prior, folder = folders[1], folders[2], hint_folder[1]
    hint = hint_inputs(1)[2]
    Image.fromarray((hint[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "depth.png")
    hint = torch.from_numpy(np.array(Image.open(tmp_path / "depth.png"))).permute(2, 0, 1)[None].float() / 255
    pngs = tmp_path / "in"
    pngs.mkdir()
    Image.fromarray((hint_inputs(1)[3][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(pngs / "0.png")
    c, p = ["--control-image", str(tmp_path / "depth.png")], ["--prior", str(prior_folder)]
    common = ["--prompt", PROMPTS[0], "--no-progress", "--prior-steps", "2", "--steps", "2", "--guidance-scale", "3",
              "--guidance-convention", "diffusers", "--seed", "5", "--batch-size", "1"]
    for args, expected in [(["sample", "--checkpoint", str(folders[4])] + p + c, "--control-image does not apply"),
                           (["edit", "--checkpoint", str(folders[4]), "--images", str(pngs)] + p + c,
                            "--control-image does not apply"),  # RKD18
                           (["sample", "--checkpoint", str(folder)] + p, "give --control-image PNG"),
                           (["edit", "--checkpoint", str(folder), "--images", str(pngs)] + p,
                            "give --control-image PNG")]:  # RKD19
        capsys.readouterr()
        assert main(args + ["--prompt", "a", "--out", str(tmp_path / ("never" if args[0] == "edit" else "n.png"))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)
    assert not (tmp_path / "never").exists() and not (tmp_path / "n.png").exists()
    assert main(["sample", "--checkpoint", str(folder), "--height", "16", "--width", "16", "--num", "1", "--individual",
                 str(tmp_path / "each"), "--out", str(tmp_path / "grid.png")] + p + c + common) == 0
    assert main(["edit", "--checkpoint", str(folder), "--images", str(pngs), "--strength", "0.5",
                 "--out", str(tmp_path / "edited")] + p + c + common) == 0
    assert "as KandinskyV22ControlnetImg2ImgPipeline" in capsys.readouterr().out
    embeds, negative = prior_embeddings(prior, PROMPTS[0], steps=2, seed=5)
    image = torch.from_numpy(np.array(Image.open(pngs / "0.png"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = [decode_embeddings(hint_folder[2], embeds, negative, hint=hint, height=16, width=16, steps=2,
                              guidance_scale=3.0, seed=5),
            image_to_image(hint_folder[2], image, embeds, negative, hint=hint, strength=0.5, steps=2,
                           guidance_scale=3.0, seed=5)]
    for written, image in zip([sorted((tmp_path / "each").iterdir())[0], tmp_path / "edited" / "edit_00000.png"], ours):
        written = np.asarray(Image.open(written)).astype(np.float32) / 255
        assert np.abs(written - image[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("case", [{"strength": 0.5, "steps": 4}, {"strength": 1.0, "steps": 3, "one": True},
                                  {"strength": 0.6, "steps": 5, "negative_prompt": ["blurry", "dark"],
                                   "guidance_scale": 3.0}])
def test_prior_emb2emb_matches_pipeline(folders, case):
    """kandinsky_emb2emb.prior_emb2emb: KandinskyV22PriorEmb2EmbPipeline's embeddings (the images' CLIP embeddings,
    tiled to the rows, noised to the strength's first timestep, the prior's loop from there) from the same per-row
    generators; one image for two prompts; a negative prompt (its rows tiled the images too)."""
    from diffkit.interop.kandinsky_emb2emb import prior_emb2emb
    _, folder, model = folders[:3]
    case = dict(case)
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))[:1 if case.pop("one", False) else 2]
    pipe = diffusers.KandinskyV22PriorEmb2EmbPipeline(**folders[0].components)
    pipe.set_progress_bar_config(disable=True)
    gens = generators_from_seed(7, 2) * (2 if "negative_prompt" in case else 1)
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=pixels, num_inference_steps=case["steps"], strength=case["strength"],
                      negative_prompt=case.get("negative_prompt"), guidance_scale=case.get("guidance_scale", 4.0),
                      generator=[torch.Generator().manual_seed(g.initial_seed()) for g in gens])
    ours = prior_emb2emb(model, PROMPTS, pixels, seed=7, **case)
    for a, b in zip((theirs.image_embeds, theirs.negative_image_embeds), ours):
        assert relative_error(b, a) < 1e-5, relative_error(b, a)


def test_prior_emb2emb_refusals(folders):
    from diffkit.interop.kandinsky_emb2emb import prior_emb2emb
    model = folders[2]
    for call, expected in [({"strength": 0}, "strength=0 is not allowed; give a number in \\(0, 1\\]"),
                           ({"strength": 0.1, "steps": 3}, "strength=0.1 with steps=3 keeps no timestep"),
                           ({"images": torch.rand(3, 3, 8, 8)}, "3 images for 2 rows"),
                           ({"images": torch.rand(1, 3, 16, 16)}, "images of shape \\(1, 3, 16, 16\\) are not "
                                                                   "allowed; give \\(N, 3, 8, 8\\)"),
                           ({"images": None}, "give images \\(CLIP pixel values\\) or image_embeds")]:
        with pytest.raises(DiffkitError, match=expected):
            prior_emb2emb(model, PROMPTS, **{"images": torch.rand(1, 3, 8, 8), **call})


def test_cli_prior_image_matches_library(folders, tmp_path, capsys):
    """diffkit sample --checkpoint DECODER --prior PRIOR --prior-image PNG --prior-strength S: the PNG the library's
    prior_emb2emb (the prior folder's image processor's pixel values) decoded by decode_embeddings, both from seed;
    its refusals in one line, no file."""
    import numpy as np
    from PIL import Image

    from diffkit.interop.kandinsky_emb2emb import prior_emb2emb, prior_pixels
    _, prior_folder, prior, _, folder, decoder = folders
    pixels = torch.rand(12, 12, 3, generator=torch.Generator().manual_seed(4))
    Image.fromarray((pixels.numpy() * 255).round().astype(np.uint8)).save(tmp_path / "photo.png")
    base = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--no-progress", "--prior-steps", "4",
            "--steps", "2", "--height", "16", "--width", "16", "--num", "1", "--batch-size", "1", "--seed", "5"]
    p, image = ["--prior", str(prior_folder)], ["--prior-image", str(tmp_path / "photo.png")]
    for extra, expected in [(image, "give --prior FOLDER"),
                            (p + ["--prior-strength", "0.5"], "--prior-strength needs --prior-image PNG"),  # RKD20
                            (p + image + ["--prior-strength", "0.2"], "--prior-strength 0.2 is not allowed with "
                                                                      "--prior-steps 4"),  # RKD21
                            (p + ["--prior-image", str(folder / "model_index.json")], "cannot be read as an image"),
                            (p + image + image, "--prior-image given 2 times; a Kandinsky 2.2 prior takes one")]:
        capsys.readouterr()
        assert main(base + extra + ["--out", str(tmp_path / "never.png")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (extra, err)
    assert not (tmp_path / "never.png").exists()
    assert main(base + p + image + ["--prior-strength", "0.5", "--out", str(tmp_path / "grid.png"), "--individual",
                                    str(tmp_path / "each")]) == 0
    assert "at strength 0.5" in capsys.readouterr().out
    embeds, negative = prior_emb2emb(prior, PROMPTS[0], prior_pixels(prior_folder, tmp_path / "photo.png"),
                                     strength=0.5, steps=4, seed=5)
    ours = decode_embeddings(decoder, embeds, negative, height=16, width=16, steps=2, seed=5)
    written = np.asarray(Image.open(sorted((tmp_path / "each").iterdir())[0])).astype(np.float32) / 255
    assert np.abs(written - ours[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
