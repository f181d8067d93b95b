"""VisualCloze folders (diffkit.interop.visualcloze; VisualClozeGenerationPipeline): generate() and `diffkit edit
--example / --query` against diffusers' own pipeline on a tiny random folder (test_flux_fill's tiny FLUX.1 Fill
components: a 144-channel transformer, VAE factor f = 2; resolution 8, so each grid image is about 8 x 8 pixels)."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.visualcloze import generate, load_visualcloze, visualcloze_prompt  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_flux_fill  # noqa: E402

KW = {"max_sequence_length": 64}  # the longest prompt here: 59 T5 tokens
TASKS = ["In each row, [IMAGE2] is the edges of [IMAGE1].", "Make [IMAGE2] from [IMAGE1]."]
CONTENTS = ["a red cat", None]


@pytest.fixture(scope="module")
def tiny_visualcloze(tmp_path_factory):
    """(VisualClozeGenerationPipeline.from_pretrained, folder, load_visualcloze of it)."""
    return test_flux_fill.tiny_variant_folder(tmp_path_factory.mktemp("visualcloze"),
                                              diffusers.VisualClozeGenerationPipeline, 144, load=load_visualcloze,
                                              resolution=8)


def _pil(seed, height, width):
    from PIL import Image
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.numpy().astype(np.uint8))


def _grids():
    """Two grids of one layout (two examples of two images of other sizes, a query with its second image the
    target) of different images."""
    return [[[_pil(10 * g + 0, 8, 12), _pil(10 * g + 1, 8, 12)], [_pil(10 * g + 2, 10, 10), _pil(10 * g + 3, 9, 9)],
             [_pil(10 * g + 4, 12, 8), None]] for g in range(2)]


def test_visualcloze_matches_the_pipeline(tiny_visualcloze):
    pipe, _, vc = tiny_visualcloze
    grids = _grids()
    with torch.no_grad():
        theirs = pipe(task_prompt=TASKS, content_prompt=CONTENTS, image=grids, num_inference_steps=3,
                      output_type="latent", generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                      **KW).images
    ours = torch.cat(generate(vc, grids, TASKS, CONTENTS, steps=3, seed=5, return_latents=True, **KW))
    error = relative_error(ours, theirs)
    print("visualcloze", tuple(ours.shape), float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


def test_visualcloze_images_with_two_targets_and_the_prompt(tiny_visualcloze):
    """One grid (one example of three images, a query whose last two are targets: the processor's common-width
    branch), a plain task string and no content prompt, 2 steps: generate()'s target images against the pipeline's
    (output_type "np"); the text is the pipeline's encode_prompt's, its layout part the tuple diffusers formats."""
    from diffkit.interop.visualcloze import VisualCloze
    pipe, _, vc = tiny_visualcloze
    pipe = diffusers.VisualClozeGenerationPipeline(**pipe.components, resolution=16)  # widths floored to 16 there
    pipe.set_progress_bar_config(disable=True)
    vc = VisualCloze(vc.flux, 16)
    grid = [[_pil(30, 16, 16), _pil(31, 24, 16), _pil(32, 20, 16)], [_pil(33, 16, 16), None, None]]
    with torch.no_grad():
        theirs = pipe(task_prompt=TASKS[1], content_prompt=None, image=grid, num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(9), **KW).images
    ours = generate(vc, grid, TASKS[1], steps=2, seed=9, **KW)
    assert len(ours) == 1 and len(ours[0]) == 2
    ours = torch.stack(ours[0]).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    print("visualcloze images", ours.shape, np.abs(ours - theirs).max())
    assert np.abs(ours - theirs).max() < 1e-5
    text = visualcloze_prompt(2, 3, TASKS[1], "a red cat")
    assert text.startswith("('A grid layout with 2 rows and 3 columns, displaying 6 images arranged side by side.',) "
                           "Make") and text.endswith(" The last image of the last row depicts: a red cat")
    context, pooled = vc.flux.encode_prompts([text], 64)
    theirs_context, theirs_pooled, _ = pipe.encode_prompt([pipe.image_processor.get_layout_prompt((2, 3))],
                                                          [TASKS[1]], ["a red cat"], device="cpu",
                                                          max_sequence_length=64)  # lists, as __call__ passes
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    torch.testing.assert_close(context, theirs_context, rtol=0, atol=1e-5)
