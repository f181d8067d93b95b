"""Stable Cascade folders (diffkit.interop.stable_cascade): diffkit's prior + decoder chain against diffusers' own
StableCascadePriorPipeline and StableCascadeDecoderPipeline on tiny random folders (two-level StableCascadeUNets,
CLIPTextModelWithProjection encoders with the byte-level tokenizer of tests/test_interop_diffusers.py, a two-level
PaellaVQModel; nothing downloaded), DDPMWuerstchenScheduler's alpha_bar and step against the scheduler, and
``diffkit sample --checkpoint PRIOR --decoder DECODER`` (the pipelines' images byte for byte; flags that do not
apply: one line); image prompts (the prior's ``images``, ``--prior-image``) and StableCascadeCombinedPipeline
folders (``--checkpoint COMBINED``)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import stable_cascade as sc  # noqa: E402

from _pixart_helpers import assert_sample_refusals, edited_copy  # noqa: E402
from test_interop_diffusers import relative_error, tiny_clip_tokenizer  # noqa: E402

PROMPTS = ["a photo", "hot dog"]


def _text_encoder(vocab: int, seed: int):
    torch.manual_seed(seed)
    return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=vocab, max_position_embeddings=16, projection_dim=32)).eval()


def _unet(seed: int, **config):
    torch.manual_seed(seed)
    return diffusers.StableCascadeUNet(
        timestep_ratio_embedding_dim=16, conditioning_dim=32, block_out_channels=(16, 32),
        down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), clip_text_pooled_in_channels=32,
        clip_seq=2, dropout=(0.0, 0.0), **config).eval()


@pytest.fixture(scope="session")
def cascade(tmp_path_factory):
    """(prior pipeline, decoder pipeline, prior folder, decoder folder, loaded StableCascade) of tiny random
    Stable Cascade folders (resolution_multiple 8, latent_dim_scale 2: 64 px -> 8 x 8 -> 16 x 16 -> 64 px; the
    prior folder with a CLIP image encoder and its processor, as the Hub's, loaded for image prompts). The
    reference pipelines are the saved objects: diffusers 0.42.1 cannot reload its own decoder folder (its
    model_index.json names ["diffusers", "PaellaVQModel"], a class diffusers no longer exports)."""
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    root = tmp_path_factory.mktemp("stable_cascade")
    tokenizer = tiny_clip_tokenizer(root)
    prior = _unet(1, in_channels=16, out_channels=16, num_attention_heads=(2, 2), clip_text_in_channels=32,
                  clip_image_in_channels=32, switch_level=(False,))
    decoder = _unet(2, in_channels=4, out_channels=4, num_attention_heads=(0, 2), effnet_in_channels=16,
                    block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock"),
                                           ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")),
                    pixel_mapper_in_channels=3, timestep_conditioning_type=("sca",))
    torch.manual_seed(3)
    vqgan = PaellaVQModel(up_down_scale_factor=2, levels=2, bottleneck_blocks=1, embed_dim=16, latent_channels=4,
                          num_vq_embeddings=32).eval()
    torch.manual_seed(5)  # the Hub's prior folder holds an image encoder (image prompts)
    image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1, image_size=16,
        patch_size=8, projection_dim=32)).eval()
    prior_pipe = diffusers.StableCascadePriorPipeline(
        prior=prior, text_encoder=_text_encoder(len(tokenizer), 0), tokenizer=tokenizer,
        scheduler=diffusers.DDPMWuerstchenScheduler(), resolution_multiple=8.0, image_encoder=image_encoder,
        feature_extractor=transformers.CLIPImageProcessor(crop_size=16, size=16))
    decoder_pipe = diffusers.StableCascadeDecoderPipeline(
        decoder=decoder, text_encoder=_text_encoder(len(tokenizer), 4), tokenizer=tokenizer,
        scheduler=diffusers.DDPMWuerstchenScheduler(), vqgan=vqgan, latent_dim_scale=2.0)
    for pipe, name in ((prior_pipe, "prior"), (decoder_pipe, "decoder")):
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(root / name)
    model = sc.load_stable_cascade(root / "prior", root / "decoder", progress=False, images=True)
    return prior_pipe, decoder_pipe, root / "prior", root / "decoder", model


def _chained(cascade, prompts, seeds, prior_scale, decoder_scale, negative=None, steps=(3, 2), size=(64, 56),
             output_type="latent", images=None, embeddings=None):
    """diffusers' chain: the prior pipeline (``images``: its image prompts; ``embeddings``: its output already
    drawn, the generators advanced past it), then the decoder pipeline on its image embeddings, one generator each
    sample (``seeds``) shared by both, as ``diffkit sample`` draws."""
    prior_pipe, decoder_pipe = cascade[:2]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad():
        again = prior_pipe(prompt=prompts, height=size[0], width=size[1], num_inference_steps=steps[0],
                           guidance_scale=prior_scale, generator=generators, images=images,
                           negative_prompt=None if negative is None else [negative] * len(prompts),
                           ).image_embeddings
        embeddings = again if embeddings is None else embeddings
        out = decoder_pipe(image_embeddings=embeddings, prompt=prompts, num_inference_steps=steps[1],
                           guidance_scale=decoder_scale, generator=generators, output_type=output_type,
                           negative_prompt=None if negative is None else [negative] * len(prompts)).images
    return embeddings, out


@pytest.mark.parametrize("prior_scale,decoder_scale,negative", [(4.0, 2.0, "ugly"), (1.0, 0.0, None)])
def test_prior_and_decoder_match_the_pipelines(cascade, prior_scale, decoder_scale, negative):
    """The prior's image embeddings and the decoder's latents equal the chained pipelines' (CFG in both stages with
    a negative prompt; both unguided), a batch of two at 64 x 56 px."""
    embeddings, latents = _chained(cascade, PROMPTS, (0, 1), prior_scale, decoder_scale, negative)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    ours = sc.text_to_image(cascade[4], PROMPTS, negative_prompt=negative, guidance_scale=prior_scale, steps=3,
                            decoder_guidance_scale=decoder_scale, decoder_steps=2, height=64, width=56,
                            generator=generators, return_latents=True)
    assert embeddings.shape == (2, 16, 8, 7) and latents.shape == (2, 4, 16, 14)
    assert embeddings.abs().max() > 0.1 and latents.abs().max() > 0.1
    assert relative_error(ours[0], embeddings) < 1e-5  # measured 0 (the same float32 operations)
    assert relative_error(ours[1], latents) < 1e-5  # measured 0


def test_bfloat16_folders_match_the_pipelines(cascade):
    """Both folders read in bfloat16 (the released weights' dtype), diffusers' pipelines loaded the same way; 3 steps,
    so that t = 1/3, 2/3 are not bfloat16 numbers: the step sees t in the network's dtype, as the pipelines pass it."""
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    bf16, decoder = torch.bfloat16, cascade[3]
    prior_pipe = diffusers.StableCascadePriorPipeline.from_pretrained(cascade[2], torch_dtype=bf16)
    decoder_pipe = diffusers.StableCascadeDecoderPipeline(  # (diffusers cannot reload this folder whole)
        decoder=diffusers.StableCascadeUNet.from_pretrained(decoder / "decoder", torch_dtype=bf16),
        text_encoder=transformers.CLIPTextModelWithProjection.from_pretrained(decoder / "text_encoder",
                                                                             torch_dtype=bf16),
        tokenizer=cascade[1].tokenizer, scheduler=cascade[1].scheduler,
        vqgan=PaellaVQModel.from_pretrained(decoder / "vqgan", torch_dtype=bf16), latent_dim_scale=2.0)
    for pipe in (prior_pipe, decoder_pipe):
        pipe.set_progress_bar_config(disable=True)
    embeddings, latents = _chained((prior_pipe, decoder_pipe), PROMPTS[:1], (3,), 4.0, 2.0, steps=(3, 3))
    model = sc.load_stable_cascade(cascade[2], decoder, dtype=bf16, progress=False)
    ours = sc.text_to_image(model, PROMPTS[:1], guidance_scale=4.0, steps=3, decoder_guidance_scale=2.0,
                            decoder_steps=3, height=64, width=56, generator=torch.Generator().manual_seed(3),
                            return_latents=True)
    assert ours[0].dtype == ours[1].dtype == bf16
    assert relative_error(ours[0].float(), embeddings.float()) < 1e-5  # measured 0
    assert relative_error(ours[1].float(), latents.float()) < 1e-5  # measured 0


def test_alpha_bar_and_step_are_the_schedulers():
    """wuerstchen_alpha_bar / wuerstchen_step against DDPMWuerstchenScheduler with other ``s`` and both ``scaler``
    warps: alpha_bar at the grid, and one step (the noise drawn as the scheduler) at a middle and at the last time."""
    for scaler, s in ((1.0, 0.008), (2.0, 0.01), (0.5, 0.008)):
        scheduler = diffusers.DDPMWuerstchenScheduler(scaler=scaler, s=s)
        scheduler.set_timesteps(4)
        grid = sc.wuerstchen_grid(4)
        assert torch.equal(grid, scheduler.timesteps)
        assert torch.equal(sc.wuerstchen_alpha_bar(grid, s, scaler), scheduler._alpha_cumprod(grid, "cpu"))
        x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        for i in (1, 3):
            t = grid[i].expand(2)
            theirs = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
            mine = sc.wuerstchen_ddpm(lambda _x, _t: eps, x, grid[i:i + 2], s=s, scaler=scaler,
                                      generator=torch.Generator().manual_seed(7))
            assert relative_error(mine, theirs) < 1e-6


def test_sample_command_draws_the_pipelines_images(cascade, tmp_path, capsys):
    """``diffkit sample --checkpoint PRIOR --decoder DECODER``: sample i from seed + i through both stages and the
    VQGAN; the single PNGs are the pipelines' images (output_type "pt") as 8-bit."""
    from diffkit.images import to_uint8
    from PIL import Image
    import numpy as np
    argv = ["sample", "--checkpoint", str(cascade[2]), "--decoder", str(cascade[3]), "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--num", "2", "--nrow", "1", "--steps", "3", "--decoder-steps", "2",
            "--decoder-guidance-scale", "2", "--guidance-scale", "3", "--guidance-convention", "diffusers",
            "--negative-prompt", "ugly", "--height", "64", "--width", "56", "--seed", "5", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "single"), "--no-progress"]
    assert main(argv) == 0
    assert "Stable Cascade prior" in capsys.readouterr().out
    _, images = _chained(cascade, PROMPTS, (5, 6), 3.0, 2.0, "ugly", output_type="pt")
    assert images.shape == (2, 3, 64, 56)
    for i, image in enumerate(to_uint8(images)):
        written = np.asarray(Image.open(tmp_path / "single" / f"sample_{i:05d}.png").convert("RGB"))
        assert np.array_equal(written, image)


def test_refusals(cascade, tmp_path, capsys):
    """One line, no file, for what a Stable Cascade pair does not take."""
    prior, decoder = cascade[2], cascade[3]
    with_decoder = ["--decoder", str(decoder)]
    assert_sample_refusals(main, prior, tmp_path, capsys, [
        (with_decoder + ["--sampler", "ddim"], "--sampler ddim does not apply to a Stable Cascade folder"),  # RSC1
        (with_decoder + ["--spacing", "quadratic"], "--spacing does not apply to a Stable Cascade prior"),  # RSC2
        (with_decoder + ["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply"),  # RSC2
        (with_decoder + ["--decoder-steps", "0"], "--decoder-steps 0 is not allowed"),  # (its own line)
        ([], "give --decoder FOLDER"),  # RSC3
    ])
    from argparse import Namespace
    from diffkit.commands._stable_cascade import CascadeRequest
    with pytest.raises(DiffkitError, match="--decoder applies to a Stable Cascade prior folder"):  # RSC9
        CascadeRequest.from_args(Namespace(decoder=str(decoder), decoder_steps=None, decoder_guidance_scale=None),
                                 tmp_path)
    capsys.readouterr()
    assert main(["edit", "--checkpoint", str(prior), "--images", str(tmp_path), "--prompt", "a",
                 "--out", str(tmp_path / "never")]) == 2
    assert "is a Stable Cascade folder, which diffkit edit does not take" in capsys.readouterr().err  # RSC8
    assert main(["sample", "--checkpoint", str(decoder), "--prompt", "a", "--out", str(tmp_path / "n.png")]) == 2
    assert "give the StableCascadePriorPipeline folder as --checkpoint" in capsys.readouterr().err  # RSC4
    combined = edited_copy(prior, tmp_path / "combined", "model_index.json",
                           {"_class_name": "StableCascadeCombinedPipeline"})
    with pytest.raises(DiffkitError, match="StableCascadeCombinedPipeline folder, which holds both halves"):
        sc.check_prior_folder(combined)  # RSC5
    wrong = edited_copy(decoder, tmp_path / "wrong", "decoder/config.json", {"effnet_in_channels": 8})
    with pytest.raises(DiffkitError, match="effnet_in_channels=8; allowed: 16"):
        sc.load_stable_cascade(prior, wrong, progress=False)  # RSC6
    with pytest.raises(DiffkitError, match="a negative prompt with guidance scales 1 .prior. and 0"):
        sc.text_to_image(cascade[4], "a", negative_prompt="b", guidance_scale=1.0)  # RSC7
    assert main(["sample", "--checkpoint", str(tmp_path / "combined"), "--decoder", str(decoder), "--prompt", "a",
                 "--out", str(tmp_path / "n.png")]) == 2
    assert not (tmp_path / "n.png").exists()


@pytest.fixture(scope="session")
def prompt_images(tmp_path_factory):
    """Two small RGB PNGs (other sizes than the processor's 16 x 16: it resizes and crops), as paths."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("cascade_images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate(((20, 24), (18, 18))):
        paths.append(root / f"image{i}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _opened(paths):
    from PIL import Image
    return [Image.open(path).convert("RGB") for path in paths]


@pytest.mark.parametrize("count,prior_scale,negative", [(2, 4.0, "ugly"), (1, 1.0, None)])
def test_image_prompts_match_the_prior_pipeline(cascade, prompt_images, count, prior_scale, negative):
    """``StableCascadePriorPipeline(images=[...])``: two image prompts with CFG and a negative prompt, one unguided;
    the image embeddings, and the decoder's latents chained on them, equal diffkit's (batch of two prompts)."""
    prior_pipe, model = cascade[0], cascade[4]
    images = prompt_images[:count]
    negatives = None if negative is None else [negative] * 2
    with torch.no_grad():
        embeddings = prior_pipe(prompt=PROMPTS, images=_opened(images), height=64, width=56, num_inference_steps=3,
                                guidance_scale=prior_scale, negative_prompt=negatives,
                                generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).image_embeddings
    ours = sc.text_to_image(model, PROMPTS, negative_prompt=negative, guidance_scale=prior_scale, steps=3,
                            decoder_guidance_scale=2.0, decoder_steps=2, height=64, width=56, images=images,
                            generator=[torch.Generator().manual_seed(s) for s in (0, 1)], return_latents=True)
    text_only = sc.prior_embeddings(model, PROMPTS, negative_prompt=negative, guidance_scale=prior_scale, steps=3,
                                    height=64, width=56, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert relative_error(ours[0], embeddings) < 1e-5  # measured 0
    assert relative_error(text_only, embeddings) > 1e-3  # the images condition the prior
    _, latents = _chained(cascade, PROMPTS, (0, 1), prior_scale, 2.0, negative, embeddings=embeddings)
    assert relative_error(ours[1], latents) < 1e-5  # measured 0


def test_prior_image_command_draws_the_pipelines_images(cascade, prompt_images, tmp_path, capsys):
    """``diffkit sample --checkpoint PRIOR --decoder DECODER --prior-image A --prior-image B``: the PNGs are the
    chained pipelines' images with ``images=[A, B]``."""
    argv = ["sample", "--checkpoint", str(cascade[2]), "--decoder", str(cascade[3]), "--prompt", PROMPTS[0],
            "--prior-image", str(prompt_images[0]), "--prior-image", str(prompt_images[1]), "--num", "1",
            "--steps", "3", "--decoder-steps", "2", "--guidance-scale", "3", "--guidance-convention", "diffusers",
            "--height", "64", "--width", "56", "--seed", "5", "--out", str(tmp_path / "grid.png"), "--individual",
            str(tmp_path / "single"), "--no-progress"]
    assert main(argv) == 0
    assert "image prompts" in capsys.readouterr().out
    _, images = _chained(cascade, PROMPTS[:1], (5,), 3.0, 0.0, output_type="pt",
                         images=_opened(prompt_images))
    _assert_pngs(tmp_path / "single", images)


def _assert_pngs(folder, images):
    from diffkit.images import to_uint8
    from PIL import Image
    import numpy as np
    for i, image in enumerate(to_uint8(images)):
        written = np.asarray(Image.open(folder / f"sample_{i:05d}.png").convert("RGB"))
        assert np.array_equal(written, image)


@pytest.fixture(scope="session")
def combined(cascade, tmp_path_factory):
    """(StableCascadeCombinedPipeline of the fixture's components, its folder, loaded with images): the pipelines'
    default resolution_multiple 42.67 and latent_dim_scale 10.67 (a combined pipeline registers neither)."""
    prior_pipe, decoder_pipe = cascade[:2]
    pipe = diffusers.StableCascadeCombinedPipeline(
        tokenizer=decoder_pipe.tokenizer, text_encoder=decoder_pipe.text_encoder, decoder=decoder_pipe.decoder,
        scheduler=decoder_pipe.scheduler, vqgan=decoder_pipe.vqgan, prior_prior=prior_pipe.prior,
        prior_text_encoder=prior_pipe.text_encoder, prior_tokenizer=prior_pipe.tokenizer,
        prior_scheduler=prior_pipe.scheduler, prior_feature_extractor=prior_pipe.feature_extractor,
        prior_image_encoder=prior_pipe.image_encoder)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("cascade_combined") / "combined"
    pipe.save_pretrained(folder)
    return pipe, folder, sc.load_stable_cascade(folder, progress=False, images=True)


def _combined_call(pipe, prompts, seeds, prior_scale, decoder_scale, negative=None, images=None,
                   output_type="latent"):
    with torch.no_grad():
        return pipe(prompt=prompts, images=images, height=128, width=96, prior_num_inference_steps=3,
                    num_inference_steps=2, prior_guidance_scale=prior_scale, decoder_guidance_scale=decoder_scale,
                    negative_prompt=None if negative is None else [negative] * len(prompts),
                    generator=[torch.Generator().manual_seed(s) for s in seeds], output_type=output_type).images


@pytest.mark.parametrize("prior_scale,decoder_scale,negative,count", [(4.0, 2.0, "ugly", 1), (1.0, 0.0, None, 0)])
def test_combined_folder_matches_the_combined_pipeline(combined, prompt_images, prior_scale, decoder_scale, negative,
                                                       count):
    """A ``StableCascadeCombinedPipeline`` folder (both halves, the decoder on the prior's text embeddings): the
    decoder's latents equal the combined pipeline's, CFG in both stages with a negative prompt and an image prompt,
    and unguided."""
    pipe, _, model = combined
    images = prompt_images[:count] or None
    latents = _combined_call(pipe, PROMPTS, (0, 1), prior_scale, decoder_scale, negative,
                             images and _opened(images))
    ours = sc.text_to_image(model, PROMPTS, negative_prompt=negative, guidance_scale=prior_scale, steps=3,
                            decoder_guidance_scale=decoder_scale, decoder_steps=2, height=128, width=96, images=images,
                            generator=[torch.Generator().manual_seed(s) for s in (0, 1)], return_latents=True)
    assert latents.shape == (2, 4, 32, 32) and latents.abs().max() > 0.1
    assert relative_error(ours[1], latents) < 1e-5  # measured 0
    if prior_scale > 1:  # the two chained pipelines differ: their decoder encodes the prompt itself
        from dataclasses import replace
        chained = sc.text_to_image(replace(model, combined=False), PROMPTS, negative_prompt=negative,
                                   guidance_scale=prior_scale, steps=3, decoder_guidance_scale=decoder_scale,
                                   decoder_steps=2, height=128, width=96, images=images, return_latents=True,
                                   generator=[torch.Generator().manual_seed(s) for s in (0, 1)])[1]
        assert relative_error(chained, latents) > 1e-4  # measured 3.7e-4 (tiny random networks)


def test_combined_command_draws_the_pipelines_images(combined, tmp_path, capsys):
    """``diffkit sample --checkpoint COMBINED`` (no --decoder): the PNGs are the combined pipeline's images."""
    pipe, folder, _ = combined
    argv = ["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[1], "--num", "1", "--steps", "3",
            "--decoder-steps", "2", "--decoder-guidance-scale", "2", "--guidance-scale", "3",
            "--guidance-convention", "diffusers", "--height", "128", "--width", "96", "--seed", "7", "--out",
            str(tmp_path / "grid.png"), "--individual", str(tmp_path / "single"), "--no-progress"]
    assert main(argv) == 0
    assert "Stable Cascade combined folder" in capsys.readouterr().out
    _assert_pngs(tmp_path / "single", _combined_call(pipe, PROMPTS[1:], (7,), 3.0, 2.0, output_type="pt"))


def test_image_and_combined_refusals(cascade, combined, prompt_images, tmp_path, capsys):
    """One line, no file: --prior-image on a prior folder without an image encoder, --decoder with a combined
    folder, a file that is not an image; a combined folder's negative prompt without the prior's CFG."""
    prior, decoder, folder = cascade[2], cascade[3], combined[1]
    blind = edited_copy(prior, tmp_path / "blind", "model_index.json",
                        {"image_encoder": [None, None], "feature_extractor": [None, None]})
    image = ["--prior-image", str(prompt_images[0])]
    assert_sample_refusals(main, blind, tmp_path, capsys, [
        (["--decoder", str(decoder)] + image, "image_encoder is None: image prompts (--prior-image) need"),  # RSC10
    ])
    assert_sample_refusals(main, prior, tmp_path, capsys, [
        (["--decoder", str(decoder), "--prior-image", str(prior / "model_index.json")],
         "--prior-image " + str(prior / "model_index.json") + ": cannot be read as an image"),  # RSC13
        (["--decoder", str(decoder), "--prior-strength", "0.5"] + image, "--prior-strength needs --prior FOLDER"),
    ])
    assert_sample_refusals(main, folder, tmp_path, capsys, [
        (["--decoder", str(decoder)], "--decoder does not apply to a StableCascadeCombinedPipeline folder"),  # RSC11
        (["--guidance-scale", "0", "--decoder-guidance-scale", "2"], "are not allowed on a StableCascadeCombined"),
    ])
    with pytest.raises(DiffkitError, match="are not allowed on a StableCascadeCombinedPipeline folder"):  # RSC12
        sc.text_to_image(combined[2], "a", guidance_scale=1.0, decoder_guidance_scale=2.0)
