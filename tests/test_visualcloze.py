"""VisualCloze folders (diffkit.interop.visualcloze; VisualClozeGenerationPipeline, VisualClozePipeline's upsampling
stage): generate() and `diffkit edit --example / --query` against diffusers' own pipelines on a tiny random folder
(test_flux_fill's tiny FLUX.1 Fill components: a 144-channel transformer, VAE factor f = 2; resolution 8, so each grid
image is about 8 x 8 pixels)."""
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
    """Two grids (rows of three sizes: 16 tokens), a content prompt and None, 3 steps: the same packed z_0 as the
    pipeline's (output_type "latent") with one generator per grid: the rows' posteriors, then the noise."""
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
    with pytest.raises(DiffkitError, match="resolution=8 is too small for this grid: with several targets"):
        generate(VisualCloze(vc.flux, 8), grid, TASKS[1], steps=2, **KW)
    text = visualcloze_prompt(2, 3, TASKS[1], "a red cat")
    assert text.startswith("('A grid layout with 2 rows and 3 columns, displaying 6 images arranged side by side.',) "
                           "Make") and text.endswith(" The last image of the last row depicts: a red cat")
    context, pooled = vc.flux.encode_prompts([text], 64)
    theirs_context, theirs_pooled, _ = pipe.encode_prompt([pipe.image_processor.get_layout_prompt((2, 3))],
                                                          [TASKS[1]], ["a red cat"], device="cpu",
                                                          max_sequence_length=64)  # lists, as __call__ passes
    torch.testing.assert_close(pooled, theirs_pooled, rtol=0, atol=0)
    torch.testing.assert_close(context, theirs_context, rtol=0, atol=1e-5)




def test_visualcloze_upsampling_matches_the_combined_pipeline(tiny_visualcloze):
    """VisualClozePipeline (the same components) with upsampling_strength 0.6 at 16 x 12, 3 steps, two grids: each
    target's 8-bit image resized and edited by the Fill transformer under an all-white mask, the grid's generator
    drawing on: generate(upsampling_strength=) against its images (output_type "np")."""
    pipe, _, vc = tiny_visualcloze
    combined = diffusers.VisualClozePipeline(**pipe.components, resolution=8)
    combined.set_progress_bar_config(disable=True)
    combined.generation_pipe.set_progress_bar_config(disable=True)
    combined.upsampling_pipe.set_progress_bar_config(disable=True)
    grids = _grids()
    with torch.no_grad():
        theirs = combined(task_prompt=TASKS, content_prompt=CONTENTS, image=grids, num_inference_steps=3,
                          upsampling_strength=0.6, upsampling_height=16, upsampling_width=12, output_type="np",
                          generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **KW).images
    ours = generate(vc, grids, TASKS, CONTENTS, steps=3, seed=5, upsampling_strength=0.6, upsampling_height=16,
                    upsampling_width=12, **KW)
    ours = torch.stack([image for grid in ours for image in grid]).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape == (2, 16, 12, 3), (ours.shape, theirs.shape)
    print("visualcloze upsampling", np.abs(ours - theirs).max())
    assert np.abs(ours - theirs).max() < 1e-5




def test_visualcloze_lora_matches_load_lora_weights(tiny_visualcloze, tmp_path):
    """load_visualcloze(lora=[(file, 0.7)]) (a diffusers-format LoRA on the transformer and CLIP, written by
    save_lora_weights): the same z_0 as the pipeline after load_lora_weights + fuse_lora(0.7), one grid, 2 steps."""
    pytest.importorskip("peft")
    from test_interop_flux_more import FLUX_LORA
    from test_sd_lora import fused_transformer_lora
    pipe, folder, vc = tiny_visualcloze
    lora, fused = fused_transformer_lora(diffusers.VisualClozeGenerationPipeline, folder, tmp_path, FLUX_LORA,
                                         "text_encoder")  # read anew: fusing CLIP changes it (resolution 8 too)
    merged = load_visualcloze(folder, progress=False, lora=[(lora, 0.7)])
    grid = _grids()[0]
    with torch.no_grad():
        theirs = fused(task_prompt=TASKS[0], content_prompt=CONTENTS[0], image=grid, num_inference_steps=2,
                       output_type="latent", generator=torch.Generator().manual_seed(3), **KW).images
    ours = generate(merged, grid, TASKS[0], CONTENTS[0], steps=2, seed=3, return_latents=True, **KW)[0]
    print("visualcloze lora", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(generate(vc, grid, TASKS[0], CONTENTS[0], steps=2, seed=3, return_latents=True,
                                   **KW)[0], theirs) > 1e-3
def test_edit_command_generates_and_refuses_in_one_line(tiny_visualcloze, tmp_path, capsys):
    """`diffkit edit --example --query --task-prompt --prompt` writes generate()'s images byte for byte (two queries,
    query i from --seed + i), within one PNG level of the pipeline's; what a VisualCloze folder does not take is one
    line before any output (and its flags on another folder, diffkit sample on it)."""
    import json
    from PIL import Image
    from diffkit.cli import main
    pipe, folder, vc = tiny_visualcloze
    grids = _grids()
    paths = {}
    for g, grid in enumerate(grids):
        for r, row in enumerate(grid):
            for c, image in enumerate(row):
                if image is not None:
                    paths[g, r, c] = tmp_path / f"{g}{r}{c}.png"
                    image.save(paths[g, r, c])
    examples = [f"{paths[0, r, 0]},{paths[0, r, 1]}" for r in range(2)]
    queries = [f"{paths[g, 2, 0]},target" for g in range(2)]
    base = ["edit", "--checkpoint", str(folder), "--no-progress", "--seed", "5", "--steps", "3",
            "--max-sequence-length", "64", "--example", examples[0], "--example", examples[1]]
    common = base + ["--task-prompt", TASKS[0], "--prompt", "a red cat", "--query", queries[0], "--query", queries[1]]
    assert main(common + ["--out", str(tmp_path / "out")]) == 0
    assert "wrote 2 images of 2 queries" in capsys.readouterr().out
    ours = generate(vc, [grids[0][:2] + [grids[g][2]] for g in range(2)], TASKS[0], "a red cat", steps=3, seed=5, **KW)
    for g in range(2):
        written = np.asarray(Image.open(tmp_path / "out" / f"edit_0000{g}.png"), np.float64)
        expected = (ours[g][0].permute(1, 2, 0).numpy() * 255).round()
        assert np.array_equal(written, expected), g
        if g:
            continue
        with torch.no_grad():
            theirs = pipe(task_prompt=TASKS[0], content_prompt="a red cat", image=grids[0][:2] + [grids[g][2]],
                          num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(5 + g),
                          **KW).images
        assert np.abs(written - (theirs[0] * 255).round()).max() <= 1
    up = ["--strength", "0.6", "--height", "16", "--width", "12"]
    assert main(base + ["--query", queries[1], "--task-prompt", TASKS[1], *up, "--out", str(tmp_path / "up")]) == 0
    assert "upsampled at strength 0.6" in capsys.readouterr().out
    ours = generate(vc, grids[0][:2] + [grids[1][2]], TASKS[1], steps=3, seed=5, upsampling_strength=0.6,
                    upsampling_height=16, upsampling_width=12, **KW)[0][0]
    written = np.asarray(Image.open(tmp_path / "up" / "edit_00000.png"), np.float64)
    assert written.shape == (16, 12, 3) and np.array_equal(written, (ours.permute(1, 2, 0).numpy() * 255).round())
    combined = tmp_path / "combined"  # the same folder as a VisualClozePipeline one (its JSON edited)
    combined.mkdir()
    for sub in folder.iterdir():
        if sub.name != "model_index.json":
            (combined / sub.name).symlink_to(sub)
    index = json.loads((folder / "model_index.json").read_text())
    (combined / "model_index.json").write_text(json.dumps({**index, "_class_name": "VisualClozePipeline"}))
    from argparse import Namespace
    from diffkit.commands._visualcloze import upsampling_strength
    flags = dict(checkpoint=combined, generation_only=False, strength=None, height=None, width=None)
    assert upsampling_strength(Namespace(**flags)) == 1.0  # VisualClozePipeline's default upsampling_strength
    assert upsampling_strength(Namespace(**{**flags, "checkpoint": folder})) == 0.0
    assert main(common[:2] + [str(combined)] + common[3:] + ["--generation-only", "--out", str(tmp_path / "c")]) == 0
    for name in ("edit_00000.png", "edit_00001.png"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()
    capsys.readouterr()
    bad = tmp_path / "bad"
    two = ["--query", f"{paths[0, 2, 0]},target,target"]
    for extra, match in (
            (["--images", str(paths[0, 0, 0])], "--images does not apply to a VisualCloze folder"),
            (["--mask", str(paths[0, 0, 0])], "--mask does not apply to a VisualCloze folder .* it takes --example"),
            (["--height", "32"], "--height sets the size of the upsampling stage .* runs with --strength S"),
            (["--strength", "0.5", "--width", "18"], "--width 18 is not allowed; give a positive multiple of 4"),
            (["--generation-only"], "--generation-only applies to a VisualClozePipeline \\(combined\\) folder"),
            (["--query", f"{paths[0, 2, 0]},{paths[0, 2, 0]}"], "the query \\(last row\\) has no target"),
            (two, "has rows of \\[2, 3\\] images"),
            (["--query", f"{paths[0, 2, 0]},nothing.png"], "--query .*'nothing.png' is not a file"),
            (["--task-prompt", "a", "--task-prompt", "b"], "--task-prompt is given 3 times for 2 queries")):
        assert main(common + extra + ["--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "a", "--out", str(bad / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a VisualCloze folder (VisualClozeGenerationPipeline)" in err[0], err
    assert not bad.exists()
    other = tmp_path / "flux"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert main(["edit", "--checkpoint", str(other), "--query", queries[0], "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--query applies to a VisualCloze folder" in err[0], err
    with pytest.raises(DiffkitError, match="is a VisualCloze folder"):
        test_flux_fill.load_flux(folder, progress=False)


def test_edit_command_takes_each_querys_own_examples(tiny_visualcloze, tmp_path, capsys):
    """`--query-examples` (the k-th use the k-th --query's example rows, split by ';'): two queries with other
    examples (two rows and one), PNGs byte for byte generate()'s of those grids (TVC1: such grids against the
    pipeline); counts that do not fit, both example flags, an empty row: one line before any output."""
    from diffkit.cli import main
    from diffkit.images import png_bytes, to_uint8
    _, folder, vc = tiny_visualcloze
    grids = _grids()
    grids[1] = grids[1][1:]  # the second query: one in-context example
    paths = {}
    for g, grid in enumerate(grids):
        for r, row in enumerate(grid):
            for c, image in enumerate(row):
                if image is not None:
                    paths[g, r, c] = str(tmp_path / f"{g}{r}{c}.png")
                    image.save(paths[g, r, c])
    own = [";".join(f"{paths[g, r, 0]},{paths[g, r, 1]}" for r in range(len(grids[g]) - 1)) for g in range(2)]
    queries = [f"{paths[g, len(grids[g]) - 1, 0]},target" for g in range(2)]
    common = ["edit", "--checkpoint", str(folder), "--no-progress", "--seed", "5", "--steps", "2",
              "--max-sequence-length", "64", "--task-prompt", TASKS[0], "--query", queries[0], "--query", queries[1]]
    assert main(common + ["--query-examples", own[0], "--query-examples", own[1], "--out", str(tmp_path / "out")]) == 0
    assert "wrote 2 images of 2 queries" in capsys.readouterr().out
    ours = generate(vc, grids, TASKS[0], steps=2, seed=5, **KW)
    for g in range(2):
        assert (tmp_path / "out" / f"edit_0000{g}.png").read_bytes() == png_bytes(to_uint8(ours[g][0][None] * 2 - 1)[0])
    bad = tmp_path / "bad"
    for extra, match in (
            (["--query-examples", own[0]] * 3, "--query-examples is given 3 times for 2 queries; give it once"),
            (["--query-examples", own[0], "--example", f"{paths[0, 0, 0]},{paths[0, 0, 1]}"],
             "--example and --query-examples are given together"),
            (["--query-examples", own[0] + ";", "--query-examples", own[1]],
             "--query-examples '': '' is not a file; give comma-separated PNGs \\(the rows separated by ';'\\)"),
            (["--query-examples", own[0], "--query-examples", paths[1, 0, 0]],
             "--query .* with its --query-examples has rows of \\[1, 2\\] images")):
        assert main(common + extra + ["--out", str(bad)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not bad.exists()
