"""Kandinsky 3 folders (diffkit.interop.kandinsky3): ``text_to_image`` and ``image_to_image`` against diffusers' own
``Kandinsky3Pipeline`` / ``Kandinsky3Img2ImgPipeline`` on a tiny random folder (a T5 encoder of d_model 32 with the
unigram tokenizer of tests/test_interop_sd3.py, a ``Kandinsky3UNet`` of widths (8, 16), Kandinsky 2.2's 2-level MoVQ
of tests/_kandinsky_helpers.py, the cosine ``DDPMScheduler`` with steps_offset 1 of diffusers' own tests (without
its clip_sample); nothing downloaded), the steps' noise from the same per-row generators; ``diffkit sample`` /
``diffkit edit`` on it (the library's output to the PNG's rounding; flags that do not apply: one line)."""
import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.kandinsky3 import image_to_image, load_kandinsky3, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402

from _pixart_helpers import assert_sample_refusals, edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]  # 6 and 3 tokens: the batch is cut to 7, "hot dog" zero-padded


def tiny_components():
    """The five components of a Kandinsky3Pipeline of random weights (latents 4 x 8 x 8 for 64 px, images 16 x 16:
    the pipelines' fixed downscale 8 against the 2-level MoVQ's factor 2; the scheduler without clip_sample, which
    would saturate the random UNet's latents at +-1)."""
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    unet = diffusers.Kandinsky3UNet(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4,
                                    layers_per_block=2, block_out_channels=(8, 16), cross_attention_dim=4,
                                    encoder_hid_dim=32)
    with torch.no_grad():  # diffusers zero-initialises the norms' time MLPs and the projection's LayerNorm bias:
        for weight in unet.parameters():  # drawn here, so that the timestep and the pooled prompt (its length) act
            if not weight.any():
                weight.normal_(0, 0.3)
    movq = diffusers.VQModel(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D",
                                                                           "AttnDownEncoderBlock2D"],
                             up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], in_channels=3,
                             out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                             norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4)
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                        beta_schedule="squaredcos_cap_v2", clip_sample=False)
    return dict(tokenizer=tiny_t5_tokenizer(), text_encoder=t5, unet=unet, scheduler=scheduler, movq=movq)


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """{"ddpm" / "ddim": (Kandinsky3Pipeline, Kandinsky3Img2ImgPipeline, folder, Kandinsky3)}: the folder's
    DDPMScheduler, and the same weights with a DDIMScheduler; the pipelines of the components that were saved."""
    root = tmp_path_factory.mktemp("kandinsky3")
    parts = tiny_components()
    out = {}
    for name, scheduler in (("ddpm", parts["scheduler"]),
                            ("ddim", diffusers.DDIMScheduler.from_config(parts["scheduler"].config,
                                                                         clip_sample=False))):
        pipes = [cls(**{**parts, "scheduler": scheduler})
                 for cls in (diffusers.Kandinsky3Pipeline, diffusers.Kandinsky3Img2ImgPipeline)]
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
        pipes[0].save_pretrained(root / name)
        out[name] = (*pipes, root / name, load_kandinsky3(root / name, progress=False))
    return out


CASES = {"cfg": ({}, {}),  # the pipeline's g = 3 against the zero states / zero mask
         "negative": ({"negative_prompt": ["ugly", "blurry the photo"], "guidance_scale": 2.0},
                      {"negative_prompt": ["ugly", "blurry the photo"], "guidance_scale": 2.0, "convention": "seed"}),
         "unguided": ({"guidance_scale": 1.0}, {"guidance_scale": 0.0, "convention": "seed"})}


@pytest.mark.parametrize("scheduler,case", [("ddpm", "cfg"), ("ddpm", "negative"), ("ddpm", "unguided"),
                                            ("ddim", "cfg")])
def test_text_to_image_matches_pipeline(folders, scheduler, case):
    """text_to_image: Kandinsky3Pipeline's final latents from the same generators (seed 5 + i: z_T, then the DDPM
    steps' noise), 3 steps at 64 px; its images ("np") the MoVQ decode of those latents, (x / 2 + 0.5).clamp(0, 1)."""
    from diffkit.interop.flow_latents import finish_images
    pipe, _, _, model = folders[scheduler]
    call, ours_call = CASES[case]
    with torch.no_grad():
        theirs = [pipe(PROMPTS, num_inference_steps=3, height=64, width=64, generator=generators_from_seed(5, 2),
                       output_type=output_type, **call).images for output_type in ("latent", "np")]
    ours = text_to_image(model, PROMPTS, steps=3, height=64, width=64, seed=5, return_latents=True, **ours_call)
    assert ours.shape == theirs[0].shape == (2, 4, 8, 8)
    assert relative_error(ours, theirs[0]) < 1e-5, relative_error(ours, theirs[0])
    images = torch.from_numpy(theirs[1]).permute(0, 3, 1, 2)
    assert relative_error(finish_images(model, theirs[0], False, "0,1"), images) < 1e-6


def test_img2img_matches_pipeline(folders):
    """image_to_image: Kandinsky3Img2ImgPipeline's latents (the MoVQ's latents of the images noised to the first
    kept timestep, 3 of 4 steps at strength 0.8), images given to it in [0, 1]; a negative prompt; its images
    ("pt": postprocessed to [0, 1]) the decode of those latents."""
    from diffkit.interop.flow_latents import finish_images
    _, pipe, _, model = folders["ddpm"]
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for call in ({}, {"negative_prompt": ["ugly", "blurry"]}):
        with torch.no_grad():
            theirs = [pipe(PROMPTS, image=(images + 1) / 2, strength=0.8, num_inference_steps=4, output_type=kind,
                           generator=generators_from_seed(5, 2), **call).images for kind in ("latent", "pt")]
        ours = image_to_image(model, images, PROMPTS, strength=0.8, steps=4, seed=5, return_latents=True, **call)
        assert relative_error(ours, theirs[0]) < 1e-5, (call, relative_error(ours, theirs[0]))
        assert relative_error(finish_images(model, theirs[0], False, "0,1"), theirs[1]) < 1e-6
    with pytest.raises(DiffkitError, match="strength=0 is not allowed"):
        image_to_image(model, images, PROMPTS, strength=0)
    with pytest.raises(DiffkitError, match=r"with H, W multiples of 2 \(the MoVQ's factor\)"):
        image_to_image(model, images[..., :15], PROMPTS)


def read_pngs(paths):
    import numpy as np
    from PIL import Image
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p)).astype("float32") / 255).permute(2, 0, 1)
                        for p in paths])


def test_cli_sample_and_edit_match_library(folders, tmp_path, capsys):
    """diffkit sample / diffkit edit on the folder: each PNG the library's text_to_image / image_to_image (sample i
    from seed + i; the negative prompt; the batch's prompts as one pipeline call), to the PNG's rounding."""
    _, _, folder, model = folders["ddpm"]
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--steps", "2", "--height", "64", "--width", "64", "--seed", "5", "--batch-size", "2",
                 "--negative-prompt", "ugly", "--guidance-scale", "2", "--out", str(tmp_path / "grid.png"),
                 "--individual", str(tmp_path / "each"), "--no-progress"]) == 0
    assert "ddpm on the scheduler's timesteps, Kandinsky3Pipeline folder" in capsys.readouterr().out
    ours = text_to_image(model, PROMPTS, steps=2, height=64, width=64, seed=5, negative_prompt="ugly",
                         guidance_scale=2.0, convention="seed")
    written = read_pngs(sorted((tmp_path / "each").iterdir()))
    assert (written - ours).abs().max() <= 0.5 / 255 + 1e-6
    assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "each"), "--prompt", "cat",
                 "--steps", "4", "--strength", "0.5", "--seed", "7", "--out", str(tmp_path / "edited"),
                 "--no-progress"]) == 0
    assert "as Kandinsky3Img2ImgPipeline, strength 0.5" in capsys.readouterr().out
    edited = image_to_image(model, written * 2 - 1, "cat", strength=0.5, steps=4, seed=7)
    assert (read_pngs(sorted((tmp_path / "edited").iterdir())) - edited).abs().max() <= 0.5 / 255 + 1e-6


def test_refusals(folders, tmp_path, capsys):
    """What diffkit does not drive: one line, no file written (the folders' checks before any weight is read);
    ``--lora`` among them, as diffusers' ``load_lora_weights`` fails on either pipeline whatever the file's keys."""
    _, _, folder, model = folders["ddpm"]
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        (["--guidance-scale", "0.5"], "guidance scale 0.5 (seed convention, w = 0.5) is not allowed on a Kandinsky "
                                      "3 folder; allowed: w = 0 (none) or w > 1"),  # RKT1
        (["--height", "60"], "--height 60 is not allowed; give a positive multiple of 64"),  # RKT2
        (["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Kandinsky 3 folder"),  # RKT3
        (["--max-sequence-length", "64"], "max_sequence_length=64 is not allowed on a Kandinsky 3 folder"),  # RKT4
    ])
    from PIL import Image
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "in" / "a.png")
    for extra, expected in [(["--mask", str(tmp_path / "m.png")], "--mask does not apply to a Kandinsky 3 folder"),
                            (["--sampler", "ddim"], "--sampler does not apply to a Kandinsky 3 folder"),  # RKT3
                            (["--guidance-scale", "-0.5"], "guidance scale -0.5 (seed convention, w = -0.5) is not "
                                                           "allowed on a Kandinsky 3 folder")]:  # RKT1
        capsys.readouterr()
        assert main(["edit", "--checkpoint", str(folder), "--images", str(tmp_path / "in"), "--prompt", "cat",
                     "--out", str(tmp_path / "never"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    with pytest.raises(DiffkitError, match="negative_prompt needs guidance"):
        text_to_image(model, PROMPTS, guidance_scale=0.0, convention="seed", negative_prompt="ugly", height=64,
                      width=64)
    for name, file, change, expected in [  # RKT5, RKT6
            ("learned", "scheduler/scheduler_config.json", {"variance_type": "learned_range"},
             "allowed: a DDPMScheduler with variance_type 'fixed_small' (Kandinsky3UNet predicts no variance)"),
            ("euler", "scheduler/scheduler_config.json", {"_class_name": "EulerDiscreteScheduler"},
             "allowed: a DDPMScheduler with variance_type 'fixed_small'"),
            ("channels", "unet/config.json", {"in_channels": 8}, "allowed: 4, 4 (the pipelines' fixed latents)")]:
        bad = edited_copy(folder, tmp_path / name, file, change)
        with pytest.raises(DiffkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_kandinsky3(bad, progress=False)
        shutil.rmtree(bad)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Kandinsky3Pipeline"
    from safetensors.torch import save_file  # --lora stays refused (RKT3): diffusers' own loader loads no file
    prefix = "text_encoder.encoder.block.0.layer.0.SelfAttention.q"
    save_file({f"{prefix}.lora_A.weight": torch.ones(2, 32), f"{prefix}.lora_B.weight": torch.ones(32, 2)},
              tmp_path / "te.safetensors")
    save_file({"unet.conv_in.lora_A.weight": torch.ones(2, 4, 3, 3),
               "unet.conv_in.lora_B.weight": torch.ones(8, 2, 1, 1)}, tmp_path / "unet.safetensors")
    for pipe in folders["ddpm"][:2]:
        for name in ("te", "unet"):
            with pytest.raises(AttributeError, match="'Kandinsky3UNet' object has no attribute 'load_lora_adapter'"):
                pipe.load_lora_weights(str(tmp_path), weight_name=f"{name}.safetensors")
