"""Cosmos Predict 2.5 folders (diffkit.interop.cosmos2_5): text-, image- and video-to-world against diffusers' own
Cosmos2_5_PredictBasePipeline on a tiny random folder (Qwen-Image's byte-level tokenizer with a Qwen-style chat
template, a 2-layer Qwen2.5-VL of width 16 (states 2 x 16 wide), a 1-layer CosmosTransformer3DModel with the
condition-mask and padding-mask channels, learnable positions and the text projection (zero-initialised weights
randomised), test_cosmos2's Wan 2.1 VAE of z_dim 8 with non-trivial latents mean / std, Cosmos' Karras flow UniPC;
9 frames -> 3 latent frames of 32 x 32; nothing downloaded). The pipeline runs with test_cosmos2's pass-through
safety checker and, without torchvision, nearest-neighbour stand-ins for its resize and a ``to_tensor``."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.cosmos2_5 import generate, is_cosmos2_5_folder, load_cosmos2_5  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _qwen_image_helpers import tiny_qwen_tokenizer  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_cosmos2 import PassThroughGuardrail, _nearest_resize  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
H = W = 32  # latents 4 x 4: 2 x 2 patches
FRAMES = 9  # 3 latent frames
LENGTH = 40  # Qwen tokens (the chat template's ~30, then padding)
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}"
            "{% endfor %}<|im_end|>\n{% endfor %}")


def _to_tensor(image):
    """torchvision's ``to_tensor`` of a PIL RGB image: (3, H, W) in [0, 1]."""
    import numpy as np
    return torch.from_numpy(np.array(image).astype(np.float32) / 255.0).permute(2, 0, 1)


@pytest.fixture(scope="module")
def tiny_cosmos25(tmp_path_factory):
    """(Cosmos2_5_PredictBasePipeline.from_pretrained of the saved folder, the folder, load_cosmos2_5 of it)."""
    from diffusers.models.transformers import transformer_cosmos
    from diffusers.pipelines.cosmos import pipeline_cosmos2_5_predict
    root = tmp_path_factory.mktemp("cosmos25") / "cosmos25"
    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = TEMPLATE
    qwen = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, window_size=4,
                           fullatt_block_indexes=[0]))).eval()
    transformer = diffusers.CosmosTransformer3DModel(
        in_channels=9, out_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=1, mlp_ratio=2,
        text_embed_dim=32, adaln_lora_dim=4, max_size=(4, 8, 8), patch_size=(1, 2, 2), rope_scale=(1.0, 4.0, 4.0),
        concat_padding_mask=True, extra_pos_embed_type="learnable", use_crossattn_projection=True,
        crossattn_proj_in_channels=32, encoder_hidden_states_channels=32)
    with torch.no_grad():
        for parameter in transformer.parameters():
            if not bool(parameter.abs().max() > 0):  # the learnable positions start at zero
                parameter.normal_(0.0, 0.5)
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.3 for i in range(8)], latents_std=[1 + 0.1 * i for i in range(8)])
    scheduler = diffusers.UniPCMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True,
                                                  prediction_type="flow_prediction", sigma_max=200.0, sigma_min=0.01)
    pipe = diffusers.Cosmos2_5_PredictBasePipeline(text_encoder=qwen, tokenizer=tokenizer, transformer=transformer,
                                                   vae=vae, scheduler=scheduler, safety_checker=PassThroughGuardrail())
    pipe.register_modules(safety_checker=None)
    pipe.save_pretrained(root)
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(transformer_cosmos, "transforms"):  # no torchvision
            patch.setattr(transformer_cosmos, "transforms", types.SimpleNamespace(
                functional=types.SimpleNamespace(resize=_nearest_resize),
                InterpolationMode=types.SimpleNamespace(NEAREST="nearest")), raising=False)
        if not hasattr(pipeline_cosmos2_5_predict, "torchvision"):
            patch.setattr(pipeline_cosmos2_5_predict, "torchvision", types.SimpleNamespace(
                transforms=types.SimpleNamespace(functional=types.SimpleNamespace(to_tensor=_to_tensor))),
                raising=False)
        yield reloaded(root, diffusers.Cosmos2_5_PredictBasePipeline, load_cosmos2_5,
                       safety_checker=PassThroughGuardrail())


def _frames(count, seed, size=(W, H)):
    from PIL import Image
    pixels = torch.randint(0, 256, (count, size[1], size[0], 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return [Image.fromarray(p.numpy()) for p in pixels]


def _decoded(pipe, latents):
    """The pipeline's output_type="pt" frames of its latents (its decoding before the safety checker)."""
    with torch.no_grad():
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        video = pipe.vae.decode(latents * std + mean, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="pt")


CASES = {  # name: (pipeline kwargs, diffkit kwargs, batch)
    "text": ({"guidance_scale": 3.0, "negative_prompt": ["ugly", "blurry dog"]},
             {"guidance_scale": 3.0, "convention": "seed", "negative_prompt": ["ugly", "blurry dog"]}, 2),
    "image": ({}, {}, 2),  # one image for both prompts, the default g = 7 against the pipeline's negative prompt
    "video": ({"guidance_scale": 1.0}, {"guidance_scale": 0.0, "convention": "seed"}, 1),  # unguided, k = 2
    "ddim": ({}, {"sampler": "ddim"}, 2),  # an image per prompt (a pipeline call each); diffkit's ddim vs the
}  # folder's UniPC at order 1 without its corrector


@pytest.mark.parametrize("case", list(CASES))
def test_cosmos2_5_matches_the_pipeline(tiny_cosmos25, case):
    """Same final latents as Cosmos2_5_PredictBasePipeline from the same eps (3 UniPC steps; 2 with euler too for
    text): the Qwen states, CFG in the seed convention, the conditioning frames at timestep 1e-4 with eps - c as
    their velocity; the image decoded as the pipeline decodes (text: frames too)."""
    pipe, folder, model = tiny_cosmos25
    assert is_cosmos2_5_folder(folder) and model.padding
    theirs_kw, ours_kw, batch = CASES[case]
    prompts, condition = PROMPTS[:batch], {}
    if case == "ddim":  # a first-order UniPC without its corrector is DDIM on the same sigmas
        pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, solver_order=1,
                                                                       disable_corrector=[0, 1, 2])
    if case == "image":
        condition = {"image": _frames(1, 3, (40, 24))[0]}  # resized to 32 x 32 (nearest)
    elif case == "video":
        condition = {"video": _frames(6, 4, (40, 24))}
    latents = torch.randn(batch, 8, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(7))
    images = _frames(2, 3, (24, 40))
    calls = [(prompts, latents, condition)] if case != "ddim" else [
        ([prompt], latents[i:i + 1], {"image": image}) for i, (prompt, image) in enumerate(zip(prompts, images))]
    with torch.no_grad():
        theirs = torch.cat([pipe(prompt=p, height=H, width=W, num_frames=FRAMES, num_inference_steps=3, latents=z,
                                 max_sequence_length=LENGTH, output_type="latent", **c, **theirs_kw).frames
                            for p, z, c in calls])
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, solver_order=2,
                                                                   disable_corrector=[])
    ours_condition = {"images": [c["image"] for _, _, c in calls]} if case in ("image", "ddim") else \
        {"videos": [condition["video"]]} if case == "video" else {}
    ours = generate(model, prompts, **ours_condition, steps=3, num_frames=FRAMES, height=H, width=W,
                    latents=latents, max_sequence_length=LENGTH, return_latents=True, **ours_kw)
    error = relative_error(ours, theirs)
    print("cosmos2.5", case, float((ours - theirs).abs().max()), error)
    assert ours.shape == theirs.shape == (batch, 8, 3, 4, 4) and error < 1e-5, error
    if case == "text":
        frames_error = relative_error(model.decode_video(ours) / 2 + 0.5, _decoded(pipe, theirs))
        print("cosmos2.5 frames", frames_error)
        assert frames_error < 1e-5


def test_cosmos2_5_command_writes_the_library_videos(tiny_cosmos25, tmp_path, capsys):
    """diffkit video on the folder (--image PNG, 2 UniPC steps): the lossless animation is the library's video of
    the seed, rounded as to_uint8 does; 16 fps."""
    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, folder, model = tiny_cosmos25
    image = _frames(1, 5)[0]
    image.save(tmp_path / "in.png")
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[1], "--image", str(tmp_path / "in.png"),
                 "--seed", "4", "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "2",
                 "--guidance-scale", "3", "--guidance-convention", "seed", "--individual", str(tmp_path / "each"),
                 "--out", str(tmp_path / "grid.png"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "wrote 1 videos of 9 frames (32x32, 16 fps)" in out.out, out.out
    video = generate(model, PROMPTS[1], images=[image], steps=2, num_frames=FRAMES, height=H, width=W, seed=4,
                     guidance_scale=3.0, convention="seed")[0]
    written = read_video(tmp_path / "each" / "video_00000.png")
    assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))


def test_cosmos2_5_command_takes_an_input_video(tiny_cosmos25, tmp_path, capsys):
    """diffkit video --video FILE (a 6-frame APNG, video-to-world): the animation is the library's video of the
    read frames."""
    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.video import read_video, save_video_grid
    _, folder, model = tiny_cosmos25
    save_video_grid(torch.rand(6, 3, H, W, generator=torch.Generator().manual_seed(9)) * 2 - 1, tmp_path / "in.png")
    code = main(["video", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--video", str(tmp_path / "in.png"),
                 "--frames", str(FRAMES), "--height", str(H), "--width", str(W), "--steps", "2", "--guidance-scale",
                 "0", "--guidance-convention", "seed", "--individual", str(tmp_path / "each"),
                 "--out", str(tmp_path / "grid.png"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    video = generate(model, PROMPTS[0], videos=[read_video(tmp_path / "in.png")], steps=2, num_frames=FRAMES,
                     height=H, width=W, guidance_scale=0.0, convention="seed")[0]
    written = read_video(tmp_path / "each" / "video_00000.png")
    assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(to_uint8(video)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("part, change, args, message", [
    ("transformer/config.json", {"use_crossattn_projection": False}, [], "use_crossattn_projection=False; allowed: "
                                                                         "True"),
    ("transformer/config.json", {"crossattn_proj_in_channels": 48}, [], "crossattn_proj_in_channels=48; allowed: 32"),
    ("transformer/config.json", {"in_channels": 8}, [], "in_channels=8; allowed: 9"),
    ("scheduler/scheduler_config.json", {"prediction_type": "epsilon"}, [], "prediction_type='epsilon'"),
    ("model_index.json", {"_class_name": "Cosmos2_5_TransferPipeline"}, [],
     "Cosmos2_5_TransferPipeline folder, which diffkit video does not drive"),
    (None, None, ["--frames", "8"], "num_frames=8 is not allowed"),
    (None, None, ["--frames", "5", "--video", "v.png"], "--frames 5 is not allowed with this condition"),
    (None, None, ["--image", "x.png", "--video", "v.png"], "--image and --video are both given"),
    (None, None, ["--height", "40"], "height x width 40x1280 is not allowed"),
    (None, None, ["--guidance-scale", "0.5", "--guidance-convention", "seed"], "0.5"),
    (None, None, ["sample"], "which diffkit sample does not take (it makes videos); generate videos with diffkit "
                             "video"),
])
def test_cosmos2_5_refusals(tiny_cosmos25, tmp_path, capsys, part, change, args, message):
    """Folders diffkit does not drive and requests it refuses: one line before any weight is read, no file."""
    _, folder, _ = tiny_cosmos25
    bad = folder if part is None else changed_folder(folder, tmp_path / "bad", part, change)
    command = "sample" if args == ["sample"] else "video"
    refused_in_one_line(capsys, tmp_path, command, bad, [] if command == "sample" else args, message)


def test_cosmos2_5_library_refusals(tiny_cosmos25):
    """The library's own refusals, each one line before the network runs."""
    _, _, model = tiny_cosmos25
    image, common = _frames(1, 3)[0], {"num_frames": FRAMES, "height": H, "width": W, "steps": 2}
    for call, message in (
            (lambda: generate(model, "a", images=[image], videos=[[image] * 5], **common), "both given"),
            (lambda: generate(model, "a", videos=[[image] * 5], num_latent_conditional_frames=3, **common),
             "num_latent_conditional_frames=3 is not allowed"),
            (lambda: generate(model, "a", videos=[[image] * 3], **common), "an input video of 3 frames"),
            (lambda: generate(model, "a", videos=[[image] * 5], num_frames=5, height=H, width=W),
             "num_frames=5 is not allowed with 2 conditioning latent frames"),
            (lambda: generate(model, "a", flow_shift=3.0, **common), "flow_shift=3.0 is not allowed"),
            (lambda: generate(model, "a", num_frames=17, height=H, width=W), "give at most 13 frames of 128x128"),
            (lambda: generate(model, "a", num_frames=5, height=H, width=144), "give at most 13 frames of 128x128"),
            (lambda: generate(model, ["a", "b"], images=[image] * 3, **common), "3 conditions for 2 prompts"),
            (lambda: generate(model, "a", latents=torch.zeros(1, 8, 2, 4, 4), **common),
             "latents of shape (1, 8, 2, 4, 4)")):
        with pytest.raises(DiffkitError, match=re.escape(message)) as info:
            call()
        assert "\n" not in str(info.value)
