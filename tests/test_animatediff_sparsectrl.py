"""SparseCtrl on AnimateDiff (diffkit.interop.animatediff_sparsectrl) against diffusers' own
AnimateDiffSparseControlNetPipeline: the tiny AnimateDiff folder of test_animatediff with tiny SparseControlNetModels
of its UNet's blocks, every weight random (the zero convolutions too): the RGB kind (``use_simplified_condition_
embedding``: the frames encoded by the VAE, sampled from torch's global generator, seeded alike on both sides) and the
scribble kind (the pixels through its conditioning embedding); final latents and decoded frames; ``diffkit video
--controlnet SPARSE_DIR --control-video FILE --control-frame-index N``; refusals in one line."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.animatediff_sparsectrl import SparseControl, text_to_video  # noqa: E402
from diffkit.video import read_video, save_videos  # noqa: E402

from _video_helpers import refused_in_one_line  # noqa: E402
from test_animatediff import FRAMES, NEGATIVE, PROMPTS, SIZE, _generators, tiny_animatediff  # noqa: E402,F401
from test_interop_diffusers import randomize, relative_error  # noqa: E402

INDICES = [0, 3]


def tiny_sparse_controlnet(simplified: bool, seed: int):
    """A SparseControlNetModel of the tiny motion UNet's blocks, every weight random; ``simplified``: the RGB kind
    (VAE latents and the mask, 5 channels), else the scribble kind (RGB pixels and the mask, down 2x)."""
    torch.manual_seed(seed)
    net = diffusers.SparseControlNetModel(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, motion_max_seq_length=8,
        motion_num_attention_heads=2, conditioning_channels=4 if simplified else 3,
        conditioning_embedding_out_channels=(16, 32), use_simplified_condition_embedding=simplified)
    return randomize(net, seed).eval()


@pytest.fixture(scope="module")
def tiny_sparse(tiny_animatediff, tmp_path_factory):
    """(AnimateDiffSparseControlNetPipeline on the fixture's components, the AnimateDiff folder, our model, the RGB
    and scribble SparseCtrl models, the RGB one's folder, two 20 x 24 conditioning frames (PIL) and their APNG)."""
    from PIL import Image
    pipe, path, model, _ = tiny_animatediff
    root = tmp_path_factory.mktemp("animatediff_sparsectrl")
    nets = [tiny_sparse_controlnet(simplified, seed) for simplified, seed in ((True, 1), (False, 2))]
    nets[0].save_pretrained(root / "sparse")
    sparse = diffusers.AnimateDiffSparseControlNetPipeline(**{k: v for k, v in pipe.components.items()
                                                              if k not in ("feature_extractor", "image_encoder")},
                                                           controlnet=nets[0])
    sparse.set_progress_bar_config(disable=True)
    pixels = torch.randint(0, 256, (1, len(INDICES), 3, 20, 24), generator=torch.Generator().manual_seed(9)) / 127.5 - 1
    frames = [Image.fromarray(frame) for frame in to_uint8(pixels[0])]
    file = save_videos(pixels, root / "control")[0]
    return sparse, path, model, nets, root / "sparse", frames, file


def _theirs(pipe, net, frames, output_type, **options):
    final, saved = {}, pipe.controlnet

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    pipe.controlnet = net
    torch.manual_seed(11)  # the VAE posterior's draw (retrieve_latents without a generator)
    try:
        with torch.no_grad():
            out = pipe(PROMPTS[:1], conditioning_frames=frames, controlnet_frame_indices=INDICES,
                       generator=_generators(3, 1), output_type=output_type, callback_on_step_end=keep, height=SIZE,
                       width=SIZE, num_frames=FRAMES, **options).frames
    finally:
        pipe.controlnet = saved
    return final["latents"], out


@pytest.mark.parametrize("which", [0, 1])
def test_sparsectrl_matches_the_pipeline(tiny_sparse, which):
    """CFG s = 5 against a negative prompt, scale 0.8, 2 DDIM steps, frames at indices 0 and 3 of 5: the pipeline's
    final latents and frames (``output_type="pt"``), RGB (VAE-encoded) and scribble SparseCtrl."""
    pipe, _, model, nets, _, frames, _ = tiny_sparse
    call = dict(guidance_scale=5.0, num_inference_steps=2)
    latents, video = _theirs(pipe, nets[which], frames, "pt", negative_prompt=NEGATIVE[:1],
                             controlnet_conditioning_scale=0.8, **call)
    control = SparseControl(nets[which], frames, INDICES, 0.8)
    torch.manual_seed(11)
    ours = text_to_video(model, PROMPTS[:1], control, steps=2, seed=3, guidance_scale=5.0, negative_prompt=NEGATIVE[0],
                         num_frames=FRAMES, height=SIZE, width=SIZE, return_latents=True)
    error = relative_error(ours, latents)
    print(f"{['rgb', 'scribble'][which]} latents: {error:.2e}")
    assert error < 1e-5
    decoded = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    error = relative_error(decoded, video)
    print(f"{['rgb', 'scribble'][which]} frames: {error:.2e}")
    assert error < 1e-5


def test_sparsectrl_command_is_the_library_and_refusals(tiny_sparse, tmp_path, capsys):
    """``diffkit video --controlnet SPARSE_DIR --control-video FILE --control-frame-index 0 --control-frame-index 3
    --frames 5 --seed 4`` writes the library's videos byte for byte (the RGB posterior drawn from seed 4 for every
    video: SparseControl(..., seed=4)), one video a batch; SparseCtrl's
    refusals in one line before any weight is read, nothing written; the library's."""
    import json
    _, path, model, nets, folder, frames, file = tiny_sparse
    argv = ["--controlnet", str(folder), "--control-video", str(file), "--control-frame-index", "0",
            "--control-frame-index", "3", "--frames", str(FRAMES), "--height", str(SIZE), "--width", str(SIZE),
            "--steps", "1", "--seed", "4", "--controlnet-scale", "0.5"]
    assert main(["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--out",
                 str(tmp_path / "grid.png"), "--individual", str(tmp_path / "each"), "--no-progress", *argv]) == 0
    ours = text_to_video(model, PROMPTS, SparseControl(nets[0], frames, INDICES, 0.5, seed=4), num_frames=FRAMES,
                         steps=1, seed=4, height=SIZE, width=SIZE)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(ours[i]))
    config = json.loads((folder / "config.json").read_text())
    for name, change in (("pool", {"global_pool_conditions": True}), ("blocks", {"layers_per_block": 2})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **change}))
    sparse, video = ["--controlnet", str(folder)], ["--control-video", str(file)]
    for extra, message in (
            ([*sparse, *video], "--control-frame-index [] is not allowed for a --control-video of 2 frames"),
            ([*sparse, *video, "--control-frame-index", "0", "--control-frame-index", "5", "--frames", "5"],
             "give 2 distinct indices in 0..4"),
            ([*sparse, *video, "--control-frame-index", "0", "--control-frame-index", "0"], "give 2 distinct"),
            ([*sparse, *video, "--control-frame-index", "0", "--control-frame-index", "1",
              "--control-guidance-end", "0.5"], "--control-guidance-end with a SparseControlNetModel"),
            ([*sparse, *video, *sparse, *video], "2 --controlnet with a SparseControlNetModel"),
            (["--controlnet", str(tmp_path / "pool"), *video], "has global_pool_conditions (guess mode)"),
            (["--controlnet", str(tmp_path / "blocks"), *video], "has layers_per_block=2 but the AnimateDiff UNet"),
            (["--control-frame-index", "1"], "--control-frame-index needs --controlnet DIR"),
            ([*sparse, *video, "--control-frame-index", "0", "--control-frame-index", "1", "--frames", "9"],
             "--frames 9 is not allowed")):
        refused_in_one_line(capsys, tmp_path, "video", path, extra, message)
    with pytest.raises(DiffkitError, match=r"controlnet_frame_indices \[0, 5\] are not allowed"):
        text_to_video(model, PROMPTS, SparseControl(nets[0], frames, [0, 5]), num_frames=FRAMES)
    with pytest.raises(DiffkitError, match="is not a SparseCtrl model"):
        SparseControl(model.unet, frames)
