"""JoyImage Edit folders (diffkit.interop.joyimage): diffkit's edit_image against diffusers' own JoyImageEditPipeline
and JoyImageEditPlusPipeline on tiny random folders (tests/_joyimage_helpers.py: a Qwen3-VL whose vision tower sees
the images, the PIL Qwen2-VL image processor, the Wan VAE; nothing downloaded), and ``diffkit edit`` on them. The
pipelines' bucket table (about 1024^2 pixels, far too large for a test) is a small one in both: diffkit calls
diffusers' own ``find_best_bucket`` on the same ``BUCKETS[1024]``, patched here."""
import json
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
buckets_module = pytest.importorskip("diffusers.pipelines.joyimage.image_processor")

from PIL import Image  # noqa: E402

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_images  # noqa: E402
from diffkit.interop.joyimage import check_joyimage_folder, edit_image, load_joyimage  # noqa: E402

from _joyimage_helpers import save_joyimage, tiny_joyimage_pipeline  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

BUCKETS = [(16, 32), (24, 24), (32, 16), (24, 40)]  # (h, w): latents of f = 2, 2 x 2 patches
PROMPTS = ["make it a cat", "hot dog"]  # of unequal lengths: a padded batch


def picture(seed: int, width: int = 40, height: int = 26) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


@pytest.fixture(autouse=True)
def small_buckets(monkeypatch):
    """diffusers' (and so diffkit's) bucket table: :data:`BUCKETS` instead of the 1024^2 one."""
    monkeypatch.setitem(buckets_module.BUCKETS, 1024, BUCKETS)


@pytest.fixture(scope="session")
def edit_folder(tmp_path_factory):
    """(in-memory JoyImageEditPipeline, its saved folder, diffkit's JoyImage of it)."""
    path = tmp_path_factory.mktemp("joyimage") / "edit"
    pipe = tiny_joyimage_pipeline()
    save_joyimage(pipe, path)  # (not reloaded: Qwen3VLProcessor's loader needs torchvision)
    return pipe, path, load_joyimage(path, progress=False)


@pytest.fixture(scope="session")
def plus_folder(tmp_path_factory):
    """(in-memory JoyImageEditPlusPipeline, its saved folder, diffkit's JoyImage of it)."""
    path = tmp_path_factory.mktemp("joyimage") / "plus"
    pipe = tiny_joyimage_pipeline(plus=True)
    save_joyimage(pipe, path)
    return pipe, path, load_joyimage(path, progress=False)


def test_edit_matches_the_pipeline(edit_folder):
    """One 40 x 26 image (bucket 24 x 40, latents 12 x 20): the prompt and the default negative prompt "" see it,
    its latents (the posterior's draw: the pipeline's from torch's global generator, set here to where diffkit draws
    it, image i's generator after its noise) beside z_t's, CFG s = 4.0 rescaled to the conditional norm; then the
    decoded images at s = 2 against a negative prompt in the seed convention (W = 1), one unguided call, and UniPC on
    its own grid."""
    pipe, _, model = edit_folder
    image = picture(0)

    def theirs(**call):
        generator = torch.Generator().manual_seed(3)
        torch.randn(1, 4, 12, 20, generator=generator)  # the noise; the posterior's draw follows
        torch.random.set_rng_state(generator.get_state())
        with torch.no_grad():
            return pipe(image=image, prompt=PROMPTS[0], num_inference_steps=3,
                        generator=torch.Generator().manual_seed(3), **call).images

    reference = theirs(output_type="latent")
    ours = edit_image(model, image, PROMPTS[0], steps=3, seed=3, return_latents=True)
    assert reference.shape == ours.shape == (1, 4, 12, 20)
    assert reference.abs().max() > 0.5 and relative_error(ours, reference) < 1e-5
    mean = edit_image(model, image, PROMPTS[0], steps=3, seed=3, return_latents=True, posterior="mean")
    assert relative_error(mean, reference) > 1e-4  # the reference latents matter
    images = theirs(output_type="np", guidance_scale=2.0, negative_prompt="blurry")
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    ours = edit_image(model, image, PROMPTS[0], steps=3, seed=3, guidance_scale=1.0, convention="seed",
                      negative_prompt="blurry")
    assert ours.shape == images.shape and relative_error(ours, images) < 1e-5
    unguided = edit_image(model, image, PROMPTS[0], steps=3, seed=3, guidance_scale=1.0, return_latents=True)
    assert relative_error(unguided, theirs(output_type="latent", guidance_scale=1.0)) < 1e-5
    other = edit_image(model, image, PROMPTS[0], steps=2, seed=3, sampler="unipc", return_latents=True)
    assert torch.isfinite(other).all() and relative_error(other, reference) > 1e-4  # its own grid, with CFG


def test_edit_batch_matches_the_pipeline(edit_folder, monkeypatch):
    """Two images (the second resized to the first's bucket) with prompts of unequal lengths encoded in one padded
    batch (the transformer sees the padding: no text mask) and negative prompts; the posterior's mean in both (the
    pipeline's draw patched to it: the draw is the single test's)."""
    pipe, _, model = edit_folder
    monkeypatch.setattr(diffusers.models.autoencoders.vae.DiagonalGaussianDistribution, "sample",
                        lambda self, generator=None: self.mode())
    images = [picture(0), picture(1, 36, 30)]
    noise = torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = pipe(image=images, prompt=PROMPTS, negative_prompt=["blurry", " "], num_inference_steps=2,
                      guidance_scale=3.0, latents=noise[:, None, :, None], output_type="latent").images
    ours = edit_image(model, images, PROMPTS, steps=2, latents=noise.clone(), posterior="mean", guidance_scale=3.0,
                      negative_prompt=["blurry", " "], return_latents=True)
    assert relative_error(ours, theirs) < 1e-5


def test_plus_matches_the_pipeline(plus_folder):
    """JoyImageEditPlusPipeline with two pictures of other ratios (each at its own bucket, both after z_t's patches
    with their shape_list entries, the text mask), CFG's two passes batched against the default " " and a given
    negative prompt: the decoded images at the last picture's bucket, and at a given 16 x 32."""
    pipe, _, model = plus_folder
    pictures = [picture(0), picture(1, 20, 30)]
    for size, negative in (((None, None), None), ((16, 32), "blurry")):
        with torch.no_grad():
            theirs = pipe(images=pictures, prompt=PROMPTS[0], num_inference_steps=2, height=size[0], width=size[1],
                          negative_prompt=negative, generator=torch.Generator().manual_seed(7), output_type="np").images
        theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)
        ours = edit_image(model, pictures, PROMPTS[0], steps=2, seed=7, height=size[0], width=size[1],
                          negative_prompt=negative)
        assert theirs.shape[2:] == ((24, 24) if size[0] is None else size)
        assert theirs.std() > 0.02 and relative_error(ours, theirs) < 1e-5
    with pytest.raises(DiffkitError, match="one prompt seeing its images .the pipeline's batch 1.: 2 prompts"):
        edit_image(model, pictures, PROMPTS)


def edited_files(tmp_path, name, args, count) -> list:
    """The files ``diffkit edit`` writes for ``count`` pictures (seed 4, 1 step)."""
    inputs, out = tmp_path / f"in_{name}", tmp_path / name
    inputs.mkdir()
    for i in range(count):
        picture(i).save(inputs / f"{i}.png")
    assert main(["edit", "--images", str(inputs), "--prompt", "x", "--steps", "1", "--seed", "4", "--out", str(out),
                 "--no-progress"] + args) == 0
    return [p.read_bytes() for p in sorted(out.iterdir())]


def test_edit_command_edits_each_image_alone(edit_folder, plus_folder, tmp_path):
    """``diffkit edit`` on either folder: image i alone from seed + i, byte for byte (Plus, one image: seeing the
    ``--image-reference`` picture after it, the output at that picture's bucket)."""
    kinds = (("edit", edit_folder, [], 2), ("plus", plus_folder, [picture(9, 20, 30)], 1))
    for name, (_, path, model), extra, count in kinds:
        flags = ["--checkpoint", str(path)]
        if extra:
            extra[0].save(tmp_path / "reference.png")
            flags += ["--image-reference", str(tmp_path / "reference.png")]
        expected = torch.cat([edit_image(model, [picture(i)] + extra, "x", steps=1, seed=4 + i, output_range="-1,1")
                              for i in range(count)])
        save_images(expected, tmp_path / f"expected_{name}", prefix="edit")
        assert edited_files(tmp_path, name, flags, count) == \
            [p.read_bytes() for p in sorted((tmp_path / f"expected_{name}").iterdir())]


def json_copy(path, tmp_path, part=None, **changes):
    """The folder's JSON files (no weights) in tmp_path, with ``changes`` in ``part``'s config."""
    copy = tmp_path / "copy"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    if part is not None:
        name = copy / part / ("scheduler_config.json" if part == "scheduler" else "config.json")
        name.write_text(json.dumps({**json.loads(name.read_text()), **changes}))
    return copy


@pytest.mark.parametrize("part,changes,message", [
    ("scheduler", {"use_dynamic_shifting": True}, "use_dynamic_shifting=True, for which JoyImageEditPipeline passes"),
    ("transformer", {"in_channels": 16}, "in_channels, out_channels = 16, None; allowed: 4, 4 or null"),
    ("transformer", {"patch_size": [2, 2, 2]}, r"patch_size=\[2, 2, 2\]; allowed: \[1, p, p\]"),
    ("model_index", None, "transformer is a 'JoyImageEditPlusTransformer3DModel'; allowed: "
                          "JoyImageEditTransformer3DModel")])
def test_folders_refused_in_one_line(edit_folder, tmp_path, part, changes, message):
    """What diffkit does not drive is refused from the JSON alone, one line each."""
    copy = json_copy(edit_folder[1], tmp_path, None if part == "model_index" else part, **(changes or {}))
    if part == "model_index":
        index = json.loads((copy / "model_index.json").read_text())
        index["transformer"][1] = "JoyImageEditPlusTransformer3DModel"
        (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DiffkitError, match=message):
        check_joyimage_folder(copy)


def test_options_refused_in_one_line(edit_folder, tmp_path, capsys):
    """A negative prompt without CFG, an unknown posterior, no image, --mask / --strength / --height,
    --image-reference on an Edit folder and diffkit sample: one line each, before anything is written."""
    _, path, model = edit_folder
    with pytest.raises(DiffkitError, match="a negative prompt with guidance_scale=1 .diffusers convention. is not"):
        edit_image(model, picture(0), "x", guidance_scale=1.0, negative_prompt="blurry")
    with pytest.raises(DiffkitError, match="posterior"):
        edit_image(model, picture(0), "x", posterior="mode")
    with pytest.raises(DiffkitError, match="edits images; give at least one"):
        edit_image(model, [], "x")
    picture(0).save(tmp_path / "a.png")
    base = ["edit", "--checkpoint", str(path), "--images", str(tmp_path / "a.png"), "--prompt", "x", "--out",
            str(tmp_path / "out")]
    for extra, message in ((["--mask", str(tmp_path / "a.png")], "--mask does not apply to a JoyImage Edit folder"),
                           (["--strength", "0.5"], "--strength does not apply"),
                           (["--height", "32"], "--height does not apply"),
                           (["--image-reference", str(tmp_path / "a.png")],
                            "--image-reference does not apply to a JoyImageEditPipeline folder")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "s.png")]) == 2
    assert "is a JoyImage Edit folder, which diffkit sample does not take" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.png").exists()
