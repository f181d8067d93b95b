"""Z-Image Omni folders (diffkit.interop.z_image_omni): text_to_image with and without condition images against
diffusers' own ZImageOmniPipeline on a tiny random folder (test_z_image.py's Qwen3 and tokenizer, a 1-layer omni
ZImageTransformer2DModel with SigLIP inputs, its zero-initialised parameters drawn at random, a 1-layer
Siglip2VisionModel and its PIL processor, the FLUX test VAE; nothing downloaded), ``diffkit sample --reference-image``
on it (the library's PNG byte for byte), and one-line refusals."""
import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.z_image import check_z_image_folder, load_z_image  # noqa: E402
from diffkit.interop.z_image_omni import ZImageOmni, text_to_image  # noqa: E402

from _kandinsky5_helpers import randomised  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from _sana_helpers import changed_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae  # noqa: E402
from test_z_image import tiny_qwen_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
LENGTH = 48  # Qwen tokens (the pipeline's 512 by default)


def tiny_z_image_omni_pipeline():
    """A ZImageOmniPipeline of random weights (module docstring; axes_lens 64: SigLIP's positions are scaled to the
    latents' size)."""
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(0)
    qwen = transformers.Qwen3Model(transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512)).eval()
    transformer = randomised(diffusers.ZImageTransformer2DModel(
        in_channels=16, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
        axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64], siglip_feat_dim=16))
    siglip = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, patch_size=4,
        num_patches=16)).eval()
    return diffusers.ZImageOmniPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_flux_vae(), text_encoder=qwen,
        tokenizer=tokenizer, transformer=transformer, siglip=siglip,
        siglip_processor=Siglip2ImageProcessorPil(patch_size=4, max_num_patches=16))


@pytest.fixture(scope="session")
def z_image_omni(tmp_path_factory):
    """(ZImageOmniPipeline.from_pretrained of the saved folder, the folder, load_z_image of it, two random PIL
    images of 80 x 68 and 72 x 64: latents 16 x 34 x 40 and 16 x 32 x 36)."""
    from PIL import Image
    path = tmp_path_factory.mktemp("z_image_omni") / "omni"
    tiny_z_image_omni_pipeline().save_pretrained(path)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (68, 80, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (64, 72, 3), dtype=np.uint8))]
    return (*reloaded(path, diffusers.ZImageOmniPipeline, load_z_image), images)


def test_z_image_omni_encodes_prompts_as_the_pipeline(z_image_omni):
    """Each prompt's segments (one without images, N + 2 with N) equal ``encode_prompt``'s list of masked states."""
    pipe, _, model, images = z_image_omni
    assert isinstance(model, ZImageOmni)
    for count in (0, 2):
        with torch.no_grad():
            theirs, _ = pipe.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False,
                                           max_sequence_length=LENGTH, num_condition_images=count)
        states, mask = model.encode_prompts(PROMPTS, LENGTH, ([None] * count, []) if count else None)
        assert states.shape[:2] == (2, count + 2 if count else 1)
        for rows, masks, segments in zip(states, mask, theirs):
            assert len(segments) == rows.shape[0]
            assert all(torch.equal(row[keep], seg) for row, keep, seg in zip(rows, masks, segments))


@pytest.mark.parametrize("kw,images", [(dict(guidance_scale=3.0, negative_prompt=["ugly", "blurry dog"]), 2),
                                       (dict(guidance_scale=0.0), 2),
                                       (dict(guidance_scale=2.0, cfg_normalization=True, cfg_truncation=0.5), 1),
                                       (dict(guidance_scale=3.0, height=16, width=16), 0)])
def test_z_image_omni_matches_the_pipeline(z_image_omni, kw, images):
    """z_0 from the same z equals ZImageOmniPipeline's: two / one condition images (the VAE in bfloat16 on both
    sides: the pipeline encodes ``image.bfloat16()``), CFG W with negative prompts, unguided, cfg_normalization and
    cfg_truncation; text alone."""
    pipe, _, model, pictures = z_image_omni
    shape = {2: (32, 36), 1: (34, 40), 0: (8, 8)}[images]
    z = torch.randn(2, 16, *shape, generator=torch.Generator().manual_seed(1))
    vaes = pipe.vae, model.vae
    pipe.vae, model.vae = copy.deepcopy(pipe.vae).to(torch.bfloat16), copy.deepcopy(model.vae).to(torch.bfloat16)
    try:
        fresh = {k: list(v) if isinstance(v, list) else v for k, v in kw.items()}  # (the pipeline writes them)
        with torch.no_grad():
            theirs = pipe(prompt=list(PROMPTS), image=pictures[:images] or None, num_inference_steps=2, latents=z,
                          output_type="latent", max_sequence_length=LENGTH, **fresh).images
        ours = text_to_image(model, PROMPTS, pictures[:images] or None, steps=2, latents=z, max_sequence_length=LENGTH,
                             return_latents=True, **kw)
    finally:
        pipe.vae, model.vae = vaes
    assert theirs.abs().max() > 0.5
    assert relative_error(ours, theirs) < 1e-5  # measured 5.4e-7 (CFG), 1.5e-7 (W = 0), 4.8e-7, 4.9e-7 (text)


def test_z_image_omni_sample_is_the_library(z_image_omni, tmp_path, capsys):
    """``diffkit sample --reference-image A --reference-image B``: the library's grid byte for byte (the size of the
    last image); --lora and diffkit edit refused in one line."""
    _, path, model, images = z_image_omni
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
    files = [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    out = tmp_path / "grid.png"
    argv = ["sample", "--checkpoint", str(path), "--prompt", "hot dog", "--num", "1", "--steps", "2", "--seed", "5",
            "--max-sequence-length", str(LENGTH), "--batch-size", "1", "--no-progress"]
    assert main(argv + ["--reference-image", files[0], "--reference-image", files[1], "--out", str(out)]) == 0
    expected = text_to_image(model, ["hot dog"], files, steps=2, seed=5, max_sequence_length=LENGTH,
                             output_range="-1,1")
    assert expected.shape == (1, 3, 64, 72)
    save_grid(expected, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    for call, text in [(argv + ["--lora", files[0], "--out", str(tmp_path / "never.png")],
                        "--lora does not apply to a Z-Image Omni folder"),
                       (["edit", "--checkpoint", str(path), "--images", files[0], "--prompt", "hot", "--out",
                         str(tmp_path / "never")], "Z-Image Omni folder, which diffkit edit does not take")]:
        capsys.readouterr()
        assert main(call) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.png").exists()


def test_z_image_omni_refusals_are_one_line(z_image_omni, tmp_path):
    from PIL import Image
    _, path, model, _ = z_image_omni
    small = Image.new("RGB", (40, 80))
    for call, text in [(lambda: text_to_image(model, "hot", [small], steps=1), "reference image 0 is not allowed: "
                                                                               "Image too small"),
                       (lambda: text_to_image(model, "hot", steps=1, controlnets=object()), "a ControlNet is not "
                                                                                            "allowed"),
                       (lambda: load_z_image(path, progress=False, lora=["x.safetensors"]), "a LoRA is not allowed"),
                       (lambda: check_z_image_folder(path), "'ZImageOmniPipeline' folder, which diffkit does not "
                                                            "drive here; allowed: ZImagePipeline")]:
        with pytest.raises(DiffkitError, match=text) as error:
            call()
        assert "\n" not in str(error.value)
    copy_path = changed_copy(path, tmp_path, "transformer/config.json", {"siglip_feat_dim": None})
    with pytest.raises(DiffkitError, match="siglip_feat_dim=None \\(Z-Image Omni's image inputs, .*allowed: a number"):
        load_z_image(copy_path, progress=False)
