"""FLUX.1 Fill folders (diffkit.interop.flux_channels; FluxFillPipeline): image_to_image(mask=) and `diffkit edit
--mask` against diffusers' own pipeline on a tiny random folder (the components of test_interop_flux's, with a
144-channel transformer: 4 x (16 latent + 16 masked-image latent + 2 x 2 mask channels), VAE factor f = 2)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.flux import image_to_image, load_flux, text_to_image, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402

PROMPTS = test_interop_flux.PROMPTS
KW = {"max_sequence_length": 12}


_COMPONENTS = {}  # test_interop_flux's tiny FLUX.1-dev components, made once for this file and test_flux_control


def tiny_variant_folder(root, cls, in_channels: int, load=load_flux, **config):
    """A FLUX folder of pipeline class ``cls`` (FluxFillPipeline, FluxControlPipeline; VisualCloze's, with its
    ``config``: resolution): test_interop_flux's tiny FLUX.1-dev components with a transformer of ``in_channels``
    (out_channels 64), written by save_pretrained; with ``load`` (default load_flux) of it."""
    if not _COMPONENTS:
        _COMPONENTS.update({key: value for key, value in test_interop_flux.tiny_flux_pipeline(root, True).components
                            .items() if key not in ("image_encoder", "feature_extractor")})
    components = dict(_COMPONENTS)
    torch.manual_seed(2)
    components["transformer"] = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    cls(**components, **config).save_pretrained(root / "folder")
    pipe = cls.from_pretrained(root / "folder", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, root / "folder", load(root / "folder", progress=False)


@pytest.fixture(scope="module")
def tiny_fill(tmp_path_factory):
    """(FluxFillPipeline.from_pretrained, folder, load_flux of it)."""
    return tiny_variant_folder(tmp_path_factory.mktemp("flux_fill"), diffusers.FluxFillPipeline, 144)


def _images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # [0, 1]


def _mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 3:10] = 1  # odd columns: cells half repainted
    return mask


@pytest.mark.parametrize("steps, strength, per_image", [(3, 1.0, False), (4, 0.6, True)])
def test_flux_fill_matches_the_pipeline(tiny_fill, steps, strength, per_image):
    """Same z_0 as FluxFillPipeline (its defaults: the embedded guidance 30): image i's generator seed + i draws the
    image's posterior (at strength 1 too), the noise, the masked image's posterior; the masked-image latents and the
    f x f mask channels concatenated after the packed latents at every step; strength 0.6 on get_timesteps' cut."""
    pipe, _, flux = tiny_fill
    images = _images()
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) > 0.5).float() * 0.9 if per_image \
        else _mask()
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=images, mask_image=mask, strength=strength, num_inference_steps=steps,
                      height=16, width=16, output_type="latent",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = image_to_image(flux, images * 2 - 1, PROMPTS, None if strength == 1 else strength, mask=mask, steps=steps,
                          seed=5, return_latents=True, **KW)
    error = relative_error(ours, theirs)
    print("flux fill", steps, strength, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def _write_inputs(tmp_path):
    """The test images as PNGs in tmp_path / "in", the mask as tmp_path / "mask.png" (and an 8 x 8 one)."""
    from PIL import Image
    (tmp_path / "in").mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / "in" / f"{i}.png")
    Image.fromarray(np.uint8(_mask()[0, 0].numpy() * 255)).save(tmp_path / "mask.png")
    Image.fromarray(np.uint8(_mask()[0, 0, ::2, ::2].numpy() * 255)).save(tmp_path / "small.png")


def test_edit_command_fills_and_refuses_in_one_line(tiny_fill, tmp_path, capsys):
    """`diffkit edit --mask` on a Fill folder writes image_to_image(mask=)'s images byte for byte (FluxFillPipeline's
    strength 1 and guidance 30 by default), within one PNG level of the pipeline's; what a Fill folder does not take
    (no --mask, a mask of another size, true CFG, diffkit sample, text_to_image) is one line, before any output."""
    from PIL import Image
    from diffkit.cli import main
    from diffkit.commands.edit import read_pngs
    from diffkit.images import save_images
    pipe, folder, flux = tiny_fill
    _write_inputs(tmp_path)
    images, _ = read_pngs(tmp_path / "in", "RGB")
    common = ["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], "--no-progress", "--seed", "5", "--steps", "3", "--max-sequence-length", "12"]
    assert main(common + ["--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out")]) == 0
    assert "strength 1.0" in capsys.readouterr().out
    ours = image_to_image(flux, images, PROMPTS, mask=_mask(), steps=3, seed=5, output_range="-1,1", **KW)
    save_images(ours, tmp_path / "expected", prefix="edit")
    written = []
    for i in range(2):
        name = f"edit_0000{i}.png"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
        written.append(np.asarray(Image.open(tmp_path / "out" / name), np.float64))
    with torch.no_grad():
        theirs = pipe(PROMPTS, image=(images + 1) / 2, mask_image=_mask(), num_inference_steps=3, height=16, width=16,
                      output_type="np", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                      **KW).images
    assert np.abs(np.stack(written) - (theirs * 255).round()).max() <= 1
    bad = tmp_path / "bad"
    for extra, match in (
            ([], "FluxFillPipeline: .* it only inpaints; use diffkit edit --images PNG --mask PNG"),
            (["--mask", str(tmp_path / "small.png")], "--mask is 8x8 but the images are 16x16"),
            (["--mask", str(tmp_path / "mask.png"), "--true-cfg-scale", "2", "--negative-prompt", "u"],
             "--negative-prompt \\(true CFG\\) does not apply to a FLUX.1 Fill folder")):
        assert main(common + extra + ["--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "a", "--out", str(bad / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it only inpaints" in err[0] and not bad.exists(), err
    for call in (lambda: text_to_image(flux, PROMPTS, steps=2), lambda: image_to_image(flux, images, PROMPTS)):
        with pytest.raises(DiffkitError, match="it only inpaints"):
            call()
    with pytest.raises(DiffkitError, match="control_image .* feeds a FLUX.1 Depth / Canny transformer"):
        text_to_image(flux, PROMPTS, control_image=torch.rand(1, 3, 16, 16), steps=2)


def test_a_fill_folder_with_other_channels_is_refused_before_loading(tiny_fill, tmp_path):
    """A FluxFillPipeline folder whose transformer is the text-to-image one (in_channels 64), or has another
    out_channels: one line from the JSON files alone (no weight read)."""
    import json
    _, folder, _ = tiny_fill
    for change, match in (({"in_channels": 64}, "in_channels=64 .* allowed: 144 .* FluxFillPipeline extra channels"),
                          ({"out_channels": 144}, "out_channels=144; allowed: 64")):
        bad = tmp_path / str(len(match))
        (bad / "transformer").mkdir(parents=True)
        for sub in folder.iterdir():
            if sub.name != "transformer":
                (bad / sub.name).symlink_to(sub)
        config = json.loads((folder / "transformer" / "config.json").read_text())
        (bad / "transformer" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(DiffkitError, match=match):
            load_flux(bad, progress=False)
