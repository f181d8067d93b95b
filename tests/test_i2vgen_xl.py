"""I2VGen-XL folders (diffkit.interop.i2vgen_xl, diffkit video --image): image_to_video against diffusers' own
I2VGenXLPipeline on a tiny random folder (the tiny Stable Diffusion's text encoder, tokenizer and VAE of
test_interop_diffusers, a 1-layer CLIP vision tower of projection 32, a randomised 1-layer I2VGenXLUNet: its
zero-initialised temporal layers too; SD's DDIM scheduler; nothing downloaded), 3 frames of 16 x 24, 3 steps."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.images import to_uint8  # noqa: E402
from diffkit.interop.i2vgen_xl import image_to_video, load_i2vgen_xl  # noqa: E402
from diffkit.video import read_video  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import randomize, relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_sd_prompts import _with_text_model  # noqa: E402

PROMPTS, NEGATIVE = ["a photo", "hot"], "ot"
FRAMES, HEIGHT, WIDTH = 3, 16, 24  # latents (B, 4, 3, 8, 12): the tiny VAE's factor 2
PARTS = ("model_index.json", "scheduler", "unet", "text_encoder", "tokenizer", "vae", "image_encoder",
         "feature_extractor")


@pytest.fixture(scope="module")
def tiny_i2vgen_xl(tmp_path_factory):
    """(I2VGenXLPipeline.from_pretrained of the saved folder, the folder, load_i2vgen_xl of it, two input images)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("i2vgen_xl")
    _, vae, text_encoder, tokenizer = tiny_sd_components(root)
    unet = randomize(diffusers.I2VGenXLUNet(  # randomised: the temporal layers' zero-init projections too
        block_out_channels=(32, 64), sample_size=8, layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")), 4)
    vision = randomize(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=1, projection_dim=32,
        image_size=8, patch_size=4)), 5)
    with torch.no_grad():  # the image embedding's tokens made to matter (randomize's 0.05 hides which image it is)
        vision.vision_model.embeddings.patch_embedding.weight.mul_(50)
        unet.context_embedding[2].weight.mul_(100)
    pipe = diffusers.I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                      image_encoder=vision, scheduler=sd_ddim_scheduler(),
                                      feature_extractor=transformers.CLIPImageProcessor(crop_size=8, size=8))
    pipe.save_pretrained(root / "i2v")
    pipe, path, model = reloaded(root / "i2v", diffusers.I2VGenXLPipeline, load_i2vgen_xl)
    _with_text_model(pipe.text_encoder)  # the pipeline's clip_skip reads text_model.final_layer_norm (test_sd_prompts)
    pixels = torch.randint(0, 256, (2, 21, 29, 3), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    return pipe, path, model, [Image.fromarray(p.numpy()) for p in pixels]


def test_i2vgen_xl_matches_the_pipeline(tiny_i2vgen_xl):
    """Two 29 x 21 images cropped wide to 24 x 16 (and 24 x 24 for CLIP), CFG s = 5 against a negative prompt (its
    zero image embedding), the default clip_skip 1 and target_fps 16, 3 DDIM steps, 3 frames: each video's final
    latents (output_type="latent") and video 0's frames (output_type="pt") as I2VGenXLPipeline's with generator seed
    3 + i and torch's global generator seeded 7 + i (its image posterior; diffkit's from image_seed 7 + i); the CLIP
    image embedding against the pipeline's own crop and ``_encode_image``."""
    pipe, _, model, images = tiny_i2vgen_xl
    kw = dict(negative_prompt=NEGATIVE, guidance_scale=5.0, num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    ours = image_to_video(model, images, PROMPTS, steps=3, seed=3, image_seed=7, return_latents=True, **kw)
    videos = (model.decode_video(ours) / 2 + 0.5).clamp(0, 1)
    assert ours.shape == (2, 4, FRAMES, 8, 12) and videos.shape == (2, FRAMES, 3, HEIGHT, WIDTH)
    for i, kinds in enumerate((("latent", "pt"), ("latent",))):  # (video 1's decoding is video 0's)
        for kind in kinds:
            torch.manual_seed(7 + i)
            with torch.no_grad():
                theirs = pipe(PROMPTS[i], images[i], num_inference_steps=3, output_type=kind,
                              generator=torch.Generator().manual_seed(3 + i), **kw).frames
            error = relative_error((ours if kind == "latent" else videos)[i:i + 1], theirs)
            print(f"video {i} {kind}: {error:.2e}")
            assert error < 1e-5
    from diffusers.pipelines.deprecated.i2vgen_xl import pipeline_i2vgen_xl as theirs
    crop = pipe.feature_extractor.crop_size  # the CLIP input itself, against the pipeline's own crop and _encode_image
    pipe._guidance_scale = 1.0
    for image in images:
        cropped = theirs._resize_bilinear(theirs._center_crop_wide(image, (WIDTH, WIDTH)), (crop["width"],
                                                                                            crop["height"]))
        with torch.no_grad():
            reference = pipe._encode_image(cropped, "cpu", 1)
        error = relative_error(model.image_embeddings([image], WIDTH), reference)
        print(f"image embedding: {error:.1e}")
        assert error < 1e-6


def test_i2vgen_xl_defaults_are_the_pipelines():
    """The library's defaults are I2VGenXLPipeline.__call__'s (guidance 9, target_fps 16, 704 x 1280, clip_skip 1, 16
    frames, 50 steps)."""
    import inspect

    from diffkit.interop.i2vgen_xl import I2VGENXL_CLIP_SKIP, I2VGENXL_FPS, I2VGENXL_GUIDANCE, I2VGENXL_SIZE
    from diffkit.interop.modelscope import MODELSCOPE_FRAMES, MODELSCOPE_STEPS
    defaults = {k: v.default for k, v in inspect.signature(diffusers.I2VGenXLPipeline.__call__).parameters.items()}
    assert (defaults["guidance_scale"], defaults["target_fps"], (defaults["height"], defaults["width"]),
            defaults["clip_skip"], defaults["num_frames"], defaults["num_inference_steps"]) == (
        I2VGENXL_GUIDANCE, I2VGENXL_FPS, I2VGENXL_SIZE, I2VGENXL_CLIP_SKIP, MODELSCOPE_FRAMES, MODELSCOPE_STEPS)


def test_i2vgen_xl_command_is_the_library(tiny_i2vgen_xl, tmp_path, capsys):
    """``diffkit video --image`` writes the library's videos byte for byte (the default CFG 9 against "", a batch of
    two), at 16 fps (the frame rate it conditions on); refusals in one line before any weight is read."""
    _, path, model, images = tiny_i2vgen_xl
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"in{i}.png")
        image.save(files[-1])
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--image",
            str(files[0]), "--image", str(files[1]), "--frames", "2", "--height", str(HEIGHT), "--width", str(WIDTH),
            "--steps", "2", "--seed", "4", "--batch-size", "2", "--out", str(tmp_path / "grid.png"), "--individual",
            str(tmp_path / "each"), "--no-progress"]
    assert main(argv) == 0
    assert "wrote 2 videos of 2 frames (24x16, 16 fps)" in capsys.readouterr().out
    videos = image_to_video(model, images, PROMPTS, num_frames=2, height=HEIGHT, width=WIDTH, steps=2, seed=4)
    for i in range(2):
        written = ((read_video(tmp_path / "each" / f"video_{i:05d}.png") + 1) * 127.5).round().to(torch.uint8)
        assert np.array_equal(written.permute(0, 2, 3, 1).numpy(), to_uint8(videos[i]))
    image = ["--image", str(files[0])]
    unet3d = changed_folder(path, tmp_path, "model_index.json", {"unet": ["diffusers", "UNet3DConditionModel"]},
                            parts=PARTS)
    for folder, extra, message in ((path, [], "(image-to-video): give --image PNG"),
                                   (path, image + ["--frames", "1"], "--frames 1 is not allowed"),
                                   (path, image + ["--fps", "7.5"], "--fps 7.5 is not allowed"),
                                   (path, image + ["--video", "x.png"], "--video does not apply to an I2VGen-XL"),
                                   (unet3d, image, "unet is a 'UNet3DConditionModel'; allowed: I2VGenXLUNet")):
        refused_in_one_line(capsys, tmp_path, "video", folder, extra, message)
    refused_in_one_line(capsys, tmp_path, "sample", path, [], "generate videos with diffkit video")
