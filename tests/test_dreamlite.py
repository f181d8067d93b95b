"""DreamLite folders (diffkit.interop.dreamlite): text_to_image and edit_image against diffusers' own DreamLitePipeline
and DreamLiteMobilePipeline on tiny random folders (tests/_dreamlite_helpers.py; nothing downloaded), ``diffkit sample``
and ``diffkit edit`` on them (the library's PNGs byte for byte) and the one-line refusals."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.chroma import is_chroma_folder  # noqa: E402
from diffkit.interop.dreamlite import (EDIT_PREFIX, GENERATE_PREFIX, check_dreamlite_folder,  # noqa: E402
                                       edit_image, is_dreamlite_folder, load_dreamlite, text_to_image)

from _dreamlite_helpers import save_dreamlite, tiny_dreamlite_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # of unequal lengths: a padded batch, the mask passed
H, W = 32, 48  # pixels: latents 4 x 8 x 12 (f = 4)


@pytest.fixture(scope="session")
def tiny_dreamlite(tmp_path_factory):
    """{False: (DreamLitePipeline.from_pretrained of the saved folder, the folder, load_dreamlite of it), True: the
    same of a DreamLiteMobilePipeline folder of the same parts}; the processor the built one's (transformers reads a
    Qwen3VLProcessor back only with torchvision)."""
    root = tmp_path_factory.mktemp("dreamlite")
    built = tiny_dreamlite_pipeline()
    save_dreamlite(built, root / "base")
    save_dreamlite(diffusers.DreamLiteMobilePipeline(**built.components), root / "mobile")
    return {mobile: reloaded(root / name, kind, load_dreamlite, processor=built.processor)
            for mobile, name, kind in ((False, "base", diffusers.DreamLitePipeline),
                                       (True, "mobile", diffusers.DreamLiteMobilePipeline))}


def _image(height: int = 26, width: int = 43, seed: int = 0):
    """A random RGB PIL image (its size not a multiple of f: the pipeline floors it to 24 x 40)."""
    from PIL import Image
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


def _theirs(pipe, prompt, seed, **call):
    with torch.no_grad():
        return pipe(prompt=prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                    **{"output_type": "latent", **call}).images


def test_dreamlite_samples_and_edits_as_the_pipelines(tiny_dreamlite):
    """The templated prompts' last Qwen3-VL states less the template (generate: the tokenizer, cut at the length;
    edit: the processor with the 512 x 512 image), CFG against the negative prompt, the edit's three-way guidance on
    [z_t, z_ref] along the width, the size's mu, time ids, AutoencoderTiny's unscaled reference and shifted decoding;
    per-sample seeds; the Mobile pipeline's single branch; another diffkit sampler on its own grid."""
    pipe, path, model = tiny_dreamlite[False]
    assert is_dreamlite_folder(path) and not is_chroma_folder(path) and model.vae_scale_factor == 4
    texts = [GENERATE_PREFIX.format(p) for p in PROMPTS]
    ours, theirs = model.encode_prompts(texts, 5), pipe.encode_prompt("generate", texts, "cpu", torch.float32,
                                                                        max_sequence_length=5)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]) and ours[0].shape[1] == 5
    image, texts = _image(), [EDIT_PREFIX.format(p) for p in PROMPTS]
    ours = model.encode_prompts(texts, images=[image] * 2)
    theirs = pipe.encode_prompt("edit", texts, "cpu", torch.float32, image=image)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]) and not bool(ours[1].all())
    errors = {}
    for name, call in (("t2i", {}), ("t2i CFG 5, negative", {"guidance_scale": 5.0, "negative_prompt": "ugly"})):
        mine = text_to_image(model, PROMPTS, height=H, width=W, steps=2, seed=3, return_latents=True, **call)
        theirs = torch.cat([_theirs(pipe, p, 3 + i, height=H, width=W, **call) for i, p in enumerate(PROMPTS)])
        errors[name] = relative_error(mine, theirs)
    mine = text_to_image(model, PROMPTS[:1], height=H, width=W, steps=2, seed=3, output_range="0,1")
    errors["t2i images"] = relative_error(mine, _theirs(pipe, PROMPTS[0], 3, height=H, width=W, output_type="pt"))
    for name, call in (("edit", {}), ("edit s 4, s_I 2, negative", {"guidance_scale": 4.0, "image_guidance_scale": 2.0,
                                                                     "negative_prompt": "ugly"})):
        mine = edit_image(model, [image, _image(seed=1)], PROMPTS, steps=2, seed=1, return_latents=True, **call)
        theirs = torch.cat([_theirs(pipe, p, 1 + i, image=im, **call)
                            for i, (p, im) in enumerate(zip(PROMPTS, (image, _image(seed=1))))])
        assert mine.shape == (2, 4, 6, 10)  # 26 x 43 floored to 24 x 40 (f = 4): latents 6 x 10
        errors[name] = relative_error(mine, theirs)
    mine = edit_image(model, image, PROMPTS[0], height=H, width=W, steps=2, seed=1, output_range="0,1")
    errors["edit images, 32 x 48"] = relative_error(
        mine, _theirs(pipe, PROMPTS[0], 1, image=image, height=H, width=W, output_type="pt"))
    pipe, _, mobile = tiny_dreamlite[True]
    mine = text_to_image(mobile, PROMPTS, height=H, width=W, steps=2, seed=3, return_latents=True)
    errors["Mobile t2i"] = relative_error(mine, torch.cat([_theirs(pipe, p, 3 + i, height=H, width=W)
                                                           for i, p in enumerate(PROMPTS)]))
    mine = edit_image(mobile, image, PROMPTS[0], steps=2, seed=1, return_latents=True)
    errors["Mobile edit"] = relative_error(mine, _theirs(pipe, PROMPTS[0], 1, image=image))
    print("DreamLite latents / images", errors)
    assert max(errors.values()) < 1e-5  # measured: see docs/interop/dreamlite.md
    other = text_to_image(model, PROMPTS[0], sampler="dpm-solver++-2m", steps=3, height=H, width=W,
                          return_latents=True)
    assert other.shape == (1, 4, 8, 12) and bool(other.isfinite().all())
