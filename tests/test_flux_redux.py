"""FLUX.1 Redux (diffkit.interop.flux_redux) against diffusers' FluxPriorReduxPipeline + FluxPipeline(prompt_embeds=,
pooled_prompt_embeds=) on test_interop_flux's tiny random FLUX.1-dev folder and a tiny random Redux folder (a
SiglipVisionModel of width 32 as test_sd3_ip_adapter's, a ReduxImageEncoder 32 -> 32, written by save_pretrained)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import load_flux, pack_latents, text_to_image, unpack_latents  # noqa: E402
from diffkit.interop.flux_redux import load_flux_redux, redux_embeds  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402
from test_sd3_ip_adapter import tiny_siglip  # noqa: E402


_BUILT = {}  # the folders built once per session, also for the modules that import this fixture


@pytest.fixture(scope="module")
def tiny_redux(tmp_path_factory):
    """(FluxPipeline, FLUX folder, load_flux, prior with the FLUX folder's text encoders, Redux folder, its
    load_flux_redux)."""
    if "redux" not in _BUILT:
        _BUILT["redux"] = _build(tmp_path_factory)
    return _BUILT["redux"]


def _build(tmp_path_factory):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    root = tmp_path_factory.mktemp("flux_redux")
    pipe = test_interop_flux.tiny_flux_pipeline(root, True)
    pipe.save_pretrained(root / "flux")
    encoder = tiny_siglip(root / "siglip")
    torch.manual_seed(3)
    parts = {"image_encoder": encoder, "image_embedder": ReduxImageEncoder(redux_dim=32, txt_in_features=32),
             "feature_extractor": transformers.SiglipImageProcessor.from_pretrained(root / "siglip")}
    diffusers.FluxPriorReduxPipeline(**parts).save_pretrained(root / "redux")  # no text encoders (FLUX.1-Redux-dev)
    prior = diffusers.FluxPriorReduxPipeline(**parts, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                             text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2)
    return (pipe, root / "flux", load_flux(root / "flux", progress=False), prior, root / "redux",
            load_flux_redux(root / "redux", progress=False))


def _images(count=2):
    from PIL import Image
    pixels = torch.rand(count, 20, 24, 3, generator=torch.Generator().manual_seed(11))  # resized to 28 x 28
    return [Image.fromarray((p.numpy() * 255).round().astype(np.uint8)) for p in pixels]


@pytest.mark.parametrize("prompted", [False, True])
def test_redux_matches_the_prior_and_pipeline(tiny_redux, prompted):
    """Same embeddings as FluxPriorReduxPipeline (two images mixed with per-image scales; without a prompt its zeros,
    here at the folder's widths, given as its prompt_embeds; with one, T5 at 512 tokens) and same z_0 as
    FluxPipeline(prompt_embeds=, pooled_prompt_embeds=) from them, two samples of the one conditioning."""
    pipe, _, flux, prior, _, redux = tiny_redux
    images, scales = _images(), {"prompt_embeds_scale": [1.0, 0.5], "pooled_prompt_embeds_scale": [0.8, 1.2]}
    with torch.no_grad():
        text = {"prompt": "a photo of a cat"} if prompted else {
            "prompt_embeds": torch.zeros(2, 512, 32), "pooled_prompt_embeds": torch.zeros(2, 32)}
        context, pooled = prior(images, **text, **scales, return_dict=False)
    ours = redux_embeds(flux, redux, images, text.get("prompt"), **scales)
    for mine, theirs in zip(ours, (context, pooled)):
        difference = float((mine - theirs).abs().max())
        print("redux embeds", prompted, tuple(mine.shape), difference)
        assert mine.shape == theirs.shape and difference <= 1e-6 * max(1.0, float(theirs.abs().max())), difference
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theirs = pipe(prompt_embeds=context, pooled_prompt_embeds=pooled, num_images_per_prompt=2, height=16,
                      width=16, num_inference_steps=3, guidance_scale=2.5, latents=pack_latents(latents),
                      output_type="latent").images
    theirs = unpack_latents(theirs, 8, 8)
    z0 = text_to_image(flux, None, prompt_embeds=ours[0], pooled_prompt_embeds=ours[1], latents=latents, steps=3,
                       guidance_scale=2.5, return_latents=True)
    error = relative_error(z0, theirs)
    print("flux redux", prompted, float((z0 - theirs).abs().max()), error)
    assert error < 1e-5, (float((z0 - theirs).abs().max()), error)


def test_redux_refuses_in_one_line(tiny_redux, tmp_path):
    """A folder that is not a Redux one, wrong counts of scales or prompts, embeddings of other widths, prompts
    with embeddings: one line each."""
    _, folder, flux, _, _, redux = tiny_redux
    with pytest.raises(DiffkitError, match="is not a FLUX.1 Redux folder \\(a 'FluxPipeline' folder\\)"):
        load_flux_redux(folder)
    for kw, match in (({"prompt_embeds_scale": [1.0, 2.0, 3.0]}, "prompt_embeds_scale has 3 values for 2 Redux"),
                      ({"pooled_prompt_embeds_scale": float("nan")}, "pooled_prompt_embeds_scale=nan is not allowed"),
                      ({"prompts": ["a", "b", "c"]}, "3 prompts for 2 Redux image"),
                      ({"images": []}, "no Redux image")):
        with pytest.raises(DiffkitError, match=match):
            redux_embeds(flux, redux, kw.pop("images", _images()), **kw)
    context, pooled = torch.zeros(1, 5, 32), torch.zeros(1, 32)
    for kw, match in (({"prompts": "a"}, "prompt_embeds with prompts is not supported"),
                      ({"pooled_prompt_embeds": torch.zeros(1, 8)}, "of shapes \\[\\(1, 5, 32\\), \\(1, 8\\)\\]"),
                      ({"latents": torch.zeros(3, 16, 8, 8), "prompt_embeds": torch.zeros(2, 5, 32),
                        "pooled_prompt_embeds": torch.zeros(2, 32)}, "2 rows for 3 samples")):
        kw = {"prompts": None, "prompt_embeds": context, "pooled_prompt_embeds": pooled, **kw}
        with pytest.raises(DiffkitError, match=match):
            text_to_image(flux, kw.pop("prompts"), steps=1, **kw)


def test_sample_command_redux_and_refusals(tiny_redux, tmp_path, capsys, monkeypatch):
    """`diffkit sample --redux DIR --redux-image PNG` (two images, per-image scales; with and without --prompt)
    writes text_to_image(prompt_embeds=redux_embeds(...))'s grid byte for byte (sample i from seed + i); Redux
    flags without --redux, a Redux folder of another kind, no --redux-image, scale / prompt counts that do not fit,
    --max-sequence-length, a non-FLUX checkpoint: one line each, before any output."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop import flux as flux_module
    monkeypatch.setattr(flux_module, "DEFAULT_SAMPLE_SIZE", 8)
    _, folder, flux, _, redux_folder, redux = tiny_redux
    files = []
    for i, image in enumerate(_images()):
        files.append(str(tmp_path / f"r{i}.png"))
        image.save(files[-1])
    common = ["sample", "--checkpoint", str(folder), "--num", "2", "--nrow", "2", "--steps", "2", "--seed", "5",
              "--batch-size", "2", "--no-progress"]
    redux_flags = ["--redux", str(redux_folder), "--redux-image", files[0], "--redux-image", files[1],
                   "--redux-prompt-scale", "1.0", "--redux-prompt-scale", "0.5", "--redux-pooled-scale", "0.8"]
    for prompt in ([], ["--prompt", "a photo of a cat"]):
        out = tmp_path / f"out{len(prompt)}.png"
        assert main(common + redux_flags + prompt + ["--out", str(out)]) == 0, prompt
        context, pooled = redux_embeds(flux, redux, files, prompt[1:] or None, prompt_embeds_scale=[1.0, 0.5],
                                       pooled_prompt_embeds_scale=0.8)
        images = text_to_image(flux, None, prompt_embeds=context, pooled_prompt_embeds=pooled, seed=5, steps=2,
                               latents=torch.cat([torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(
                                   5 + i)) for i in range(2)]), output_range="-1,1")
        save_grid(images, tmp_path / "expected.png", 2)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes(), prompt
    capsys.readouterr()
    bad = tmp_path / "bad"
    for extra, match in (
            (["--redux-image", files[0]], "--redux-image needs --redux DIR"),
            (["--redux", str(folder), "--redux-image", files[0]], "is not a FLUX.1 Redux folder \\(a 'FluxPipeline'"),
            (["--redux", str(redux_folder)], "--redux needs --redux-image PNG"),
            (redux_flags + ["--redux-pooled-scale", "1", "--redux-pooled-scale", "1"],
             "--redux-pooled-scale is given 3 times for 2 --redux-image"),
            (redux_flags + ["--prompt", "a", "--prompt", "b", "--prompt", "c"], "--prompt is given 3 times for 2"),
            (redux_flags + ["--max-sequence-length", "12"], "--max-sequence-length does not go with --redux")):
        assert main(common + extra + ["--out", str(bad / "o.png")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
    assert main(["sample", "--checkpoint", str(redux_folder), "--prompt", "a", "--out", str(bad / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a FLUX.1 Redux folder (FluxPriorReduxPipeline): give it as --redux DIR" in err[0]
    from argparse import Namespace
    from diffkit.commands._flux_redux import ReduxRequest
    with pytest.raises(DiffkitError, match="--redux applies to a FLUX.1 folder \\(FluxPipeline\\); .* is not one"):
        ReduxRequest.from_args(Namespace(redux=str(redux_folder), redux_images=files), str(tmp_path))
