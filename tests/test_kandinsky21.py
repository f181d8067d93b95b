"""Kandinsky 2.1 folders (diffkit.interop.kandinsky21): a KandinskyPriorPipeline folder through Kandinsky 2.2's prior
loop and a KandinskyPipeline / KandinskyInpaintPipeline decoder (MultilingualCLIP prompt states + image embedding)
against diffusers' own pipelines on tiny random folders (tests/_kandinsky21_helpers.py; nothing downloaded), from the
same per-row generators; ``diffkit sample`` / ``diffkit edit`` on them (the library's output byte for byte; what is
not driven: one line). The pipelines have no "latent" output: their callback's last latents are compared."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.kandinsky import (decode_embeddings, image_to_image, load_decoder, load_prior,  # noqa: E402
                                       prior_embeddings)
from diffkit.interop.kandinsky_inpaint import inpaint  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402

from _kandinsky21_helpers import tiny_decoder21_pipeline  # noqa: E402
from _kandinsky_helpers import random_pngs, tiny_prior_pipeline  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _pixart_helpers import edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """(KandinskyPriorPipeline, its folder, KandinskyPrior, KandinskyPipeline, its folder, Kandinsky21Decoder), each
    pipeline read back from its folder."""
    root = tmp_path_factory.mktemp("kandinsky21")
    tiny_prior_pipeline(root, diffusers.KandinskyPriorPipeline).save_pretrained(root / "prior")
    tiny_decoder21_pipeline().save_pretrained(root / "decoder")
    return reloaded(root / "prior", diffusers.KandinskyPriorPipeline, load_prior) + \
        reloaded(root / "decoder", diffusers.KandinskyPipeline, load_decoder)


@pytest.fixture(scope="session")
def inpaint_folder(folders, tmp_path_factory):
    """(KandinskyInpaintPipeline, its folder, Kandinsky21Decoder): a 9-channel UNet with a learned variance."""
    path = tmp_path_factory.mktemp("kandinsky21_inpaint") / "inpaint"
    tiny_decoder21_pipeline(inpaint=True).save_pretrained(path)
    return reloaded(path, diffusers.KandinskyInpaintPipeline, load_decoder)


def run(pipe, *args, **call):
    """(the callback's last latents, the "pt" images) of ``pipe`` on per-row generators of seed 7."""
    latents = []
    rows = len(args[0]) if args and isinstance(args[0], list) else 1
    with torch.no_grad():
        images = pipe(*args, height=16, width=16, output_type="pt", generator=generators_from_seed(7, rows),
                      callback=lambda i, t, z: latents.append(z.clone()), **call).images
    return latents[-1], images


def embeddings(rows=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(rows, 16, generator=g), torch.randn(rows, 16, generator=g)


def test_text_to_image_matches_pipelines(folders):
    """The prior (KandinskyPriorPipeline, 3 steps, s = 4 against "", the zero image's negative embedding) and the
    decoder (KandinskyPipeline from those embeddings, 3 steps: DDPM learned_range with the last step's noise; the
    null half the empty prompt, or a negative prompt at s = 3; s = 1 unguided): latents and images."""
    prior_pipe, _, prior, pipe, _, model = folders
    with torch.no_grad():
        out = prior_pipe(PROMPTS, num_inference_steps=3, generator=generators_from_seed(7, 2))
    embeds, negative = prior_embeddings(prior, PROMPTS, steps=3, seed=7)
    assert relative_error(embeds, out.image_embeds) < 1e-5, relative_error(embeds, out.image_embeds)
    assert relative_error(negative, out.negative_image_embeds) < 1e-5
    embeds, negative = out.image_embeds, out.negative_image_embeds
    for call in ({}, {"negative_prompt": ["dark", "blurry"], "guidance_scale": 3.0}, {"guidance_scale": 1.0}):
        theirs, images = run(pipe, PROMPTS, image_embeds=embeds, negative_image_embeds=negative,
                             num_inference_steps=3, **call)
        ours = decode_embeddings(model, embeds, negative, prompts=PROMPTS, height=16, width=16, steps=3, seed=7,
                                 return_latents=True, **call)
        assert ours.shape == theirs.shape == (2, 4, 8, 8)
        assert relative_error(ours, theirs) < 1e-5, (call, relative_error(ours, theirs))
        assert relative_error(model.decode(ours), images) < 1e-5, relative_error(model.decode(ours), images)


def test_img2img_matches_pipeline(folders):
    """image_to_image on a KandinskyPipeline folder as KandinskyImg2ImgPipeline (strength 0.6 of 5 steps: 3 kept, the
    image noised at t = int(1000 * 0.6) - 2 = 598 with the pipeline's own linear-beta abar): latents; the images
    given in [0, 1] to the pipeline (its preprocessing makes them 2x - 1)."""
    pipe, model = folders[3], folders[5]
    embeds, negative = embeddings()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    img2img = diffusers.KandinskyImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    theirs, _ = run(img2img, PROMPTS, image=images, image_embeds=embeds, negative_image_embeds=negative,
                    strength=0.6, num_inference_steps=5, guidance_scale=4.0)
    ours = image_to_image(model, images * 2 - 1, embeds, negative, prompts=PROMPTS, strength=0.6, steps=5, seed=7,
                          return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    with pytest.raises(DiffkitError, match=r"int\(T strength\) - 2 = -1"):
        image_to_image(model, images, embeds, negative, prompts=PROMPTS, strength=0.001, steps=1000)


def inpaint_inputs():
    """(an image in [-1, 1], its mask: 1 = repaint, a block)."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 2:9, 4:12] = 1
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1, mask


def test_inpaint_matches_pipeline(inpaint_folder):
    """kandinsky_inpaint.inpaint on a KandinskyInpaintPipeline folder: the 2.2 mask handling, no blend (4 steps)."""
    pipe, _, model = inpaint_folder
    embeds, negative = embeddings(1)
    image, mask = inpaint_inputs()
    theirs, _ = run(pipe, PROMPTS[:1], image=image, mask_image=mask.clone(), image_embeds=embeds,
                    negative_image_embeds=negative, num_inference_steps=4)
    ours = inpaint(model, image, mask, embeds, negative, prompts=PROMPTS[:1], steps=4, seed=7, return_latents=True)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def read_pngs(paths):
    from PIL import Image
    return [np.asarray(Image.open(p)).astype(np.float32) / 255 for p in paths]


def test_cli_sample_matches_library(folders, tmp_path, capsys):
    """diffkit sample --checkpoint DECODER --prior PRIOR: each image the library's text_to_image (the decoder also
    given the prompts; the negative prompt to the prior alone, as KandinskyCombinedPipeline)."""
    from diffkit.interop.kandinsky import text_to_image
    _, prior_folder, prior, _, folder, decoder = folders
    assert main(["sample", "--checkpoint", str(folder), "--prior", str(prior_folder), "--prompt", PROMPTS[0],
                 "--prompt", PROMPTS[1], "--negative-prompt", "dark", "--guidance-scale", "3",
                 "--guidance-convention", "diffusers", "--prior-steps", "2", "--steps", "2", "--height", "16",
                 "--width", "16", "--seed", "5", "--num", "2", "--nrow", "2", "--no-progress",
                 "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each")]) == 0
    assert "Kandinsky 2.1 decoder" in capsys.readouterr().out
    ours = text_to_image(prior, decoder, PROMPTS, negative_prompt="dark", prior_steps=2, steps=2, height=16,
                         width=16, guidance_scale=3.0, seed=5)
    for i, written in enumerate(read_pngs(sorted((tmp_path / "each").iterdir()))):
        assert np.abs(written - ours[i].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def test_cli_edit_matches_library(folders, inpaint_folder, tmp_path, capsys):
    """diffkit edit on a KandinskyPipeline folder (img2img) and a KandinskyInpaintPipeline one (--mask): each PNG the
    library's (the batch of two: prior and decoder rows from seed + i)."""
    from PIL import Image
    prior_folder, prior, folder = folders[1], folders[2], folders[4]
    images = random_pngs(tmp_path / "in")
    pngs = tmp_path / "in"
    Image.fromarray((inpaint_inputs()[1][0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    common = ["--images", str(pngs), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--no-progress", "--prior",
              str(prior_folder), "--prior-steps", "2", "--steps", "4", "--guidance-scale", "3",
              "--guidance-convention", "diffusers", "--seed", "5"]
    for name, checkpoint, extra in [("img2img", folder, ["--strength", "0.5"]),
                                    ("inpaint", inpaint_folder[1], ["--mask", str(tmp_path / "mask.png")])]:
        assert main(["edit", "--checkpoint", str(checkpoint), *common, *extra, "--out", str(tmp_path / name)]) == 0
        assert "Kandinsky 2.1 decoder" in capsys.readouterr().out
        embeds, negative = prior_embeddings(prior, PROMPTS, steps=2, seed=5)  # one batch, as the CLI draws it
        options = {"prompts": PROMPTS, "steps": 4, "guidance_scale": 3.0, "seed": 5}
        ours = image_to_image(folders[5], images, embeds, negative, strength=0.5, **options) if name == "img2img" \
            else inpaint(inpaint_folder[2], images, inpaint_inputs()[1], embeds, negative, **options)
        for i, written in enumerate(read_pngs(sorted((tmp_path / name).iterdir()))):
            assert np.abs(written - ours[i].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6, (name, i)


def test_refusals(folders, inpaint_folder, tmp_path, capsys):
    """What diffkit does not drive, or a request that does not fit: one line, no file written."""
    from _pixart_helpers import assert_sample_refusals
    _, prior_folder, _, _, folder, model = folders
    v22 = edited_copy(prior_folder, tmp_path / "v22", "model_index.json", {"_class_name": "KandinskyV22PriorPipeline"})
    p = ["--prior", str(prior_folder)]
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        ([], "is a Kandinsky 2.1 decoder folder (KandinskyPipeline): give --prior FOLDER"),  # RKA1
        (["--prior", str(v22)], "is not a KandinskyPriorPipeline folder (it is a KandinskyV22PriorPipeline "
                                "folder)"),  # RKA2
        (p + ["--prior-image", str(tmp_path / "x.png")], "--prior-image applies to a Kandinsky 2.2 prior"),  # RKA3
        (p + ["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Kandinsky 2.1 decoder"),
        (p + ["--control-image", str(tmp_path / "x.png")], "--control-image does not apply to"),
        (p + ["--height", "18"], "squared; KandinskyPipeline would round other sizes up"),
    ])
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path), "--prompt", "a", "--mask",
                 str(tmp_path / "m.png"), *p, "--out", str(tmp_path / "never")]) == 2
    assert "--mask does not apply to a Kandinsky 2.1 decoder folder" in capsys.readouterr().err  # RKA4
    embeds, negative = embeddings()
    with pytest.raises(DiffkitError, match="is conditioned on the prompt as well as the image embedding"):
        decode_embeddings(model, embeds, negative, height=16, width=16, steps=2)  # RKA5
    with pytest.raises(DiffkitError, match="3 prompts for 2 image embeddings"):
        decode_embeddings(model, embeds, negative, prompts=["a", "b", "c"], height=16, width=16, steps=2)
    bad = edited_copy(folder, tmp_path / "image", "unet/config.json", {"addition_embed_type": "image"})
    with pytest.raises(DiffkitError, match="allowed: 'text_image' and 'text_image_proj'"):
        load_decoder(bad)  # RKA6
    bad = edited_copy(inpaint_folder[1], tmp_path / "four", "unet/config.json", {"in_channels": 4})
    with pytest.raises(DiffkitError, match="KandinskyInpaintPipeline folder whose UNet has in_channels=4"):
        load_decoder(bad)
    with pytest.raises(DiffkitError, match="a KandinskyPipeline decoder does not inpaint"):
        inpaint(model, *inpaint_inputs(), embeds[:1], negative[:1], prompts="a", steps=2)
