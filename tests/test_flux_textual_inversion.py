"""Textual inversion on FLUX.1 folders (``load_flux(textual_inversion=)``, ``diffkit sample / edit --checkpoint FLUX
--textual-inversion FILE[:TOKEN]``) against diffusers' own ``FluxPipeline.load_textual_inversion(file, token=...)``
(``TextualInversionLoaderMixin``: the CLIP tokenizer and text encoder; T5 untouched) on the tiny random FLUX folder of
tests/test_interop_flux.py: the pooled CLIP embeddings, the sampled latents (true CFG with the token in the negative
prompt, a multi-vector file expanded in CLIP's prompt only), the commands' PNGs, and the refusals."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
from test_cli_errors import one_line_error  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import SIZE, _latents, tiny_flux_pipeline  # noqa: E402
from test_latent_editing import write_pngs  # noqa: E402

WIDTH = 32  # the tiny CLIP text encoder's hidden size
PROMPTS = ["a photo of <cat-toy>", "hot <multi> dog"]


def _vectors(seed, n):
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def flux_ti(tmp_path_factory):
    """{"folder", "single": diffusers-format file (d,), "multi": A1111 file, 3 vectors, "xl": an SD-XL file}."""
    root = tmp_path_factory.mktemp("flux_ti")
    tiny_flux_pipeline(root, dev=True).save_pretrained(root / "flux")
    save_file({"<cat-toy>": _vectors(1, 1)[0] * 3}, root / "single.safetensors")
    torch.save({"string_to_param": {"*": _vectors(2, 3) * 3}, "name": "<multi>"}, root / "multi.pt")
    save_file({"clip_l": _vectors(3, 1), "clip_g": _vectors(4, 1)}, root / "xl.safetensors")
    return {"folder": root / "flux", "single": root / "single.safetensors", "multi": root / "multi.pt",
            "xl": root / "xl.safetensors"}


def _pipe(folder, files, kind=diffusers.FluxPipeline):
    pipe = kind.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for path, token in files:
        pipe.load_textual_inversion(str(path), token=token)
    return pipe


def _flux(folder, files):
    from diffkit.interop.flux import load_flux
    return load_flux(folder, progress=False, textual_inversion=files)


def test_prompt_embeddings_match_load_textual_inversion(flux_ti):
    """CLIP's pooled embeddings (and T5's states) of prompts with a single-vector token (own name) and a multi-vector
    one (an explicit token) equal FluxPipeline.encode_prompt's after load_textual_inversion."""
    files = [(flux_ti["single"], None), (flux_ti["multi"], "<m>")]
    prompts = ["a photo of <cat-toy>", "hot <m> dog <cat-toy>"]
    ours = _flux(flux_ti["folder"], files)
    context, pooled = ours.encode_prompts(prompts, 12)
    with torch.no_grad():
        theirs, theirs_pooled, _ = _pipe(flux_ti["folder"], files).encode_prompt(prompts, None, device="cpu",
                                                                                 max_sequence_length=12)
    assert float((pooled - theirs_pooled).abs().max()) < 1e-6, float((pooled - theirs_pooled).abs().max())
    assert torch.equal(context, theirs)  # T5 reads the prompt as given
    base = _flux(flux_ti["folder"], None)
    assert float((base.encode_prompts(prompts, 12)[1] - pooled).abs().max()) > 1e-2  # the embeddings matter
    assert torch.equal(base.encode_prompts(["hot dog"], 12)[1], ours.encode_prompts(["hot dog"], 12)[1])


def test_sampled_latents_match_the_pipeline_with_true_cfg(flux_ti):
    """z_0 of text_to_image with both files, a token in the negative prompt too (true CFG 2): FluxPipeline's."""
    from diffkit.interop.flux import pack_latents, text_to_image, unpack_latents
    files = [(flux_ti["single"], None), (flux_ti["multi"], None)]
    kw = {"negative_prompt": "x <multi>", "true_cfg_scale": 2.0, "guidance_scale": 4.0, "max_sequence_length": 12}
    ours = text_to_image(_flux(flux_ti["folder"], files), PROMPTS, steps=3, latents=_latents(), height=SIZE,
                         width=SIZE, return_latents=True, **kw)
    with torch.no_grad():
        theirs = _pipe(flux_ti["folder"], files)(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3,
                                                 latents=pack_latents(_latents()), output_type="latent", **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)


def test_sample_command_is_the_library_and_refusals(flux_ti, tmp_path, capsys):
    """`diffkit sample --checkpoint FLUX --textual-inversion FILE:TOKEN`: the grid of text_to_image; an SD-XL file on
    FLUX.1 and any file on SD3 (StableDiffusion3Pipeline has no loader): one line, no output."""
    from diffkit.images import save_grid
    from diffkit.interop.flux import text_to_image
    common = ["sample", "--checkpoint", str(flux_ti["folder"]), "--num", "1", "--steps", "2", "--height", "16",
              "--width", "16", "--max-sequence-length", "12", "--no-progress", "--device", "cpu"]
    assert main(common + ["--prompt", "hot <t>", "--textual-inversion", f"{flux_ti['multi']}:<t>",
                          "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    flux = _flux(flux_ti["folder"], [(flux_ti["multi"], "<t>")])
    save_grid(text_to_image(flux, ["hot <t>"], steps=2, seed=0, height=16, width=16, max_sequence_length=12,
                            output_range="-1,1"), tmp_path / "expected.png", 8)
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    line = one_line_error(capsys, *(common + ["--prompt", "a", "--textual-inversion", str(flux_ti["xl"]) + ":<x>",
                                                  "--out", str(tmp_path / "no" / "s.png")]))
    assert "is an SD-XL embedding (clip_l and clip_g); this folder has one text encoder" in line, line
    (tmp_path / "sd3").mkdir()  # refused from model_index.json, before anything loads
    (tmp_path / "sd3" / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    line = one_line_error(capsys, "sample", "--checkpoint", str(tmp_path / "sd3"), "--prompt", "a", "--num", "1",
                          "--textual-inversion", str(flux_ti["single"]), "--out", str(tmp_path / "no" / "s.png"))
    assert "--textual-inversion does not apply to an SD3 folder" in line, line
    assert not (tmp_path / "no").exists()
    with pytest.raises(DiffkitError, match="token <a> is also .*single.safetensors's"):
        _flux(flux_ti["folder"], [(flux_ti["single"], "<a>"), (flux_ti["multi"], "<a>")])


def test_edit_command_is_the_img2img_pipeline_with_the_embedding(flux_ti, tmp_path, capsys):
    """`diffkit edit --checkpoint FLUX --textual-inversion FILE`: FluxImg2ImgPipeline built from the components of a
    FluxPipeline that loaded the file (FluxImg2ImgPipeline has no loader of its own; a single-vector file needs no
    prompt expansion), strength 0.6: the PNGs within one level."""
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    assert main(["edit", "--no-progress", "--device", "cpu", "--checkpoint", str(flux_ti["folder"]), "--images",
                 str(pngs), "--prompt", PROMPTS[0], "--steps", "3", "--guidance-scale", "4", "--seed", "5",
                 "--max-sequence-length", "12", "--textual-inversion", str(flux_ti["single"]),
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    pipe = _pipe(flux_ti["folder"], [(flux_ti["single"], None)])
    img2img = diffusers.FluxImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = img2img([PROMPTS[0]] * 2, image=[Image.open(pngs / f"in_{i}.png") for i in range(2)], strength=0.6,
                         height=16, width=16, num_inference_steps=3, guidance_scale=4.0, max_sequence_length=12,
                         output_type="np",
                         generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    diff = np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max()
    assert diff <= 1, diff
