"""Stable unCLIP folders (diffkit.interop.stable_unclip) against diffusers' own StableUnCLIPPipeline and
StableUnCLIPImg2ImgPipeline on two tiny random folders saved with save_pretrained: the tiny SD UNet / VAE / text
encoder of test_interop_diffusers with a ``projection`` class embedding of width 2 x 16, Kandinsky's tiny prior
(tests/_kandinsky_helpers.py: PriorTransformer, CLIP text encoder with projection 16) stepped by a DDPMScheduler of
Karlo's UnCLIPScheduler config (as diffusers' conversion makes it), a StableUnCLIPImageNormalizer of random
statistics, a squaredcos DDPMScheduler noising the embedding, a v-prediction DDIMScheduler (SD 2.1's); the img2img
folder a CLIPVisionModelWithProjection of projection 16 and a CLIPImageProcessor at 28 px. Zero-initialised weights
(the prior's positional and prd embeddings, the norms' biases) are randomised. The same per-row generators on both
sides; the final latents and images compared; ``diffkit sample`` against the library byte for byte; the refusals."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import stable_unclip as unclip  # noqa: E402

from _kandinsky5_helpers import randomised  # noqa: E402
from _kandinsky_helpers import WIDTH, tiny_prior_pipeline  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402
from test_interop_diffusers import relative_error, sd_ddim_scheduler, tiny_sd_components  # noqa: E402
from test_sd_image_variation import _png  # noqa: E402

STEPS, PRIOR_STEPS = 3, 3
PROMPTS = ["a photo of a cat", "hot dog"]


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """{"text": (pipeline, path, StableUnCLIP), "image": (...), "pngs": two PNG paths}."""
    root = tmp_path_factory.mktemp("stable_unclip")
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root, class_embed_type="projection",
                                                            projection_class_embeddings_input_dim=2 * WIDTH)
    randomised(unet)
    prior_pipe = tiny_prior_pipeline(root)
    randomised(prior_pipe.prior, seed=4)
    torch.manual_seed(2)
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=WIDTH)
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, WIDTH) * 0.5)
        normalizer.std.copy_(torch.rand(1, WIDTH) + 0.5)
    common = dict(image_normalizer=normalizer, image_noising_scheduler=diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2"), tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=diffusers.DDIMScheduler.from_config(sd_ddim_scheduler().config, prediction_type="v_prediction"),
        vae=vae)
    diffusers.StableUnCLIPPipeline(
        prior_tokenizer=prior_pipe.tokenizer, prior_text_encoder=prior_pipe.text_encoder, prior=prior_pipe.prior,
        prior_scheduler=diffusers.DDPMScheduler.from_config(prior_pipe.scheduler.config),
        **common).save_pretrained(root / "text")
    encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=28,
        patch_size=7, projection_dim=WIDTH)).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    diffusers.StableUnCLIPImg2ImgPipeline(feature_extractor=processor, image_encoder=encoder,
                                          **common).save_pretrained(root / "image")
    return {"text": reloaded(root / "text", diffusers.StableUnCLIPPipeline, unclip.load_stable_unclip),
            "image": reloaded(root / "image", diffusers.StableUnCLIPImg2ImgPipeline, unclip.load_stable_unclip),
            "pngs": [_png(root / "a.png", 0), _png(root / "b.png", 1, (30, 22))]}


def _generators(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_text_to_image_matches_the_pipeline(folders):
    """Two prompts, noise level 100, DDIM with eta 0.5 (the steps' noise from the same generators after the prior's
    and the embedding's): the final latents, the images, and the class labels the UNet gets."""
    pipe, _, model = folders["text"]
    common = dict(num_inference_steps=STEPS, prior_num_inference_steps=PRIOR_STEPS, noise_level=100, eta=0.5,
                  guidance_scale=6.0)
    with torch.no_grad():
        theirs = pipe(PROMPTS, generator=_generators(3, 2), output_type="latent", **common).images
        images = pipe(PROMPTS, generator=_generators(3, 2), output_type="pt", **common).images
    ours = unclip.stable_unclip(model, PROMPTS, steps=STEPS, prior_steps=PRIOR_STEPS, noise_level=100, eta=0.5,
                                guidance_scale=6.0, seed=3, return_latents=True)
    print("text latents", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    decoded = (model.decode(ours) / 2 + 0.5).clamp(0, 1)
    print("text images", relative_error(decoded, images))
    assert relative_error(decoded, images) < 1e-5


def test_img2img_matches_the_pipeline(folders):
    """Two pictures (one per prompt), a negative prompt, noise level 250, the folder's DDIM loop: the final latents
    and the images."""
    from PIL import Image
    pipe, _, model = folders["image"]
    pictures = [Image.open(png).convert("RGB") for png in folders["pngs"]]
    common = dict(num_inference_steps=STEPS, noise_level=250, guidance_scale=5.0, negative_prompt=["hot dog"] * 2)
    with torch.no_grad():
        theirs = pipe(pictures, PROMPTS, generator=_generators(7, 2), output_type="latent", **common).images
        images = pipe(pictures, PROMPTS, generator=_generators(7, 2), output_type="pt", **common).images
    ours = unclip.stable_unclip(model, PROMPTS, images=folders["pngs"], steps=STEPS, noise_level=250,
                                guidance_scale=5.0, negative_prompt="hot dog", seed=7, return_latents=True)
    print("image latents", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    decoded = (model.decode(ours) / 2 + 0.5).clamp(0, 1)
    print("image images", relative_error(decoded, images))
    assert relative_error(decoded, images) < 1e-5


def _library_rows(model, prompts, seed, **options):
    """The library as the command draws: z_T of row i from seed + i, then the same generator for the rest."""
    from diffkit.noise import randn
    gens = _generators(seed, len(prompts))
    noise = randn(model.latent_shape(len(prompts)), gens)
    images = unclip.stable_unclip(model, prompts, latents=noise, generator=gens, seed=None, output_range="-1,1",
                                  **options)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("kind", ["text", "image"])
def test_diffkit_sample_writes_the_librarys_images(folders, tmp_path, capsys, kind):
    """Two --prompt rows of one sample each, --noise-level 40, --guidance-scale 3 (the text folder: --prior-steps 3,
    --prior-guidance-scale 2; the img2img one: one --image for both rows): the library's PNG bytes."""
    from PIL import Image
    _, path, model = folders[kind]
    extra = (["--prior-steps", str(PRIOR_STEPS), "--prior-guidance-scale", "2"] if kind == "text" else
             ["--image", str(folders["pngs"][1])])
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--steps", str(STEPS), "--noise-level", "40", "--guidance-scale", "3", "--guidance-convention",
                 "diffusers", "--seed", "4", "--out", str(tmp_path / "grid.png"), "--individual",
                 str(tmp_path / "one"), "--batch-size", "2", "--no-progress", *extra]) == 0
    assert "ddim on the scheduler's timesteps" in capsys.readouterr().out
    options = ({"prior_steps": PRIOR_STEPS, "prior_guidance_scale": 2.0} if kind == "text" else
               {"images": folders["pngs"][1]})
    theirs = _library_rows(model, PROMPTS, 4, steps=STEPS, noise_level=40, guidance_scale=3.0, **options)
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "one").glob("*.png"))])
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind, flags, match", [
    ("text", ["--noise-level", "1000"], "--noise-level=1000 is not allowed; allowed: an integer in 0..999 (the "
                                        "image_noising_scheduler's num_train_timesteps - 1)"),
    ("text", ["--noise-level", "-1"], "--noise-level=-1 is not allowed"),
    ("text", ["--image", "A"], "--image does not apply to a StableUnCLIPPipeline folder"),
    ("text", ["--prior-image", "A"], "--prior-image does not apply"),
    ("text", ["--pag-scale", "1"], "--pag-scale does not apply to a Stable unCLIP folder"),
    ("text", ["--guidance-scale", "3", "--guidance-rescale", "0.5"], "--guidance-rescale does not apply"),
    ("text", ["--scheduler", "lcm"], "--scheduler does not apply"),
    ("image", [], "give --image PNG"),
    ("image", ["--image", "A", "--prior-steps", "3"], "--prior-steps does not apply to a StableUnCLIPImg2ImgPipeline"),
    ("image", ["--image", "A", "--clip-skip", "1"], "--clip-skip does not apply"),
    ("image", ["--image", "A", "--image", "A", "--image", "A"], "--image given 3 times for 1 prompts"),
    ("image", ["--image", "NOT_AN_IMAGE"], "cannot be read as an image"),
])
def test_sample_refusals(folders, tmp_path, capsys, kind, flags, match):
    _, path, _ = folders[kind]
    flags = [str(folders["pngs"][0]) if f == "A" else str(tmp_path / "nothing.png") if f == "NOT_AN_IMAGE" else f
             for f in flags]
    assert main(["sample", "--checkpoint", str(path), "--prompt", "x", "--out", str(tmp_path / "out" / "g.png"),
                 *flags]) != 0
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_other_refusals(folders, tmp_path, capsys):
    """--noise-level elsewhere, load_stable_diffusion on the folders, the pipelines' missing options, and folders
    whose JSON diffkit does not drive (a UNet without the projection class embedding, a too narrow normaliser)."""
    import json
    import shutil

    from diffkit.interop.stable_diffusion import load_stable_diffusion
    _, path, model = folders["text"]
    assert main(["sample", "--checkpoint", str(tmp_path), "--noise-level", "3"]) != 0
    assert "--noise-level applies to a Stable unCLIP folder" in capsys.readouterr().err
    assert main(["edit", "--checkpoint", str(path), "--images", str(folders["pngs"][0]), "--prompt", "x", "--out",
                 str(tmp_path / "edited")]) != 0
    assert "use diffkit sample --checkpoint" in capsys.readouterr().err and not (tmp_path / "edited").exists()
    for kind in ("text", "image"):
        with pytest.raises(DiffkitError, match="is a Stable unCLIP folder"):
            load_stable_diffusion(folders[kind][1])
    for bad, match in (({"pag_scale": 1.0}, "pag_scale= is not allowed with a Stable unCLIP folder"),
                       ({"guidance_rescale": 0.5}, "guidance_rescale= is not allowed"),
                       ({"images": folders["pngs"][0]}, "images= is not allowed with a StableUnCLIPPipeline"),
                       ({"noise_level": 1000}, "noise_level=1000 is not allowed"),
                       ({"prompts": None}, "give prompts")):
        with pytest.raises(DiffkitError, match=match):
            unclip.stable_unclip(model, **{"prompts": "x", "steps": 1, "prior_steps": 2, **bad})
    with pytest.raises(DiffkitError, match="prior_steps= is not allowed with a StableUnCLIPImg2ImgPipeline"):
        unclip.stable_unclip(folders["image"][2], "x", images=folders["pngs"][0], prior_steps=2)
    with pytest.raises(DiffkitError, match="clip_skip=1 is not allowed"):
        unclip.stable_unclip(folders["image"][2], "x", images=folders["pngs"][0], steps=1, clip_skip=1)
    for part, change, match in (("unet/config.json", {"class_embed_type": None}, "class_embed_type=None"),
                                ("image_normalizer/config.json", {"embedding_dim": 8}, "embedding_dim=8"),
                                ("prior_scheduler/config.json", {"_class_name": "EulerDiscreteScheduler"},
                                 "prior folder's scheduler")):
        part = part.replace("prior_scheduler/config.json", "prior_scheduler/scheduler_config.json")
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        shutil.copytree(path, tmp_path / "copy", ignore=shutil.ignore_patterns("*.safetensors"))
        copy = tmp_path / "copy" / part
        copy.write_text(json.dumps({**json.loads(copy.read_text()), **change}))
        with pytest.raises(DiffkitError, match=match):
            unclip.check_stable_unclip_folder(tmp_path / "copy")


@pytest.fixture(scope="session")
def adapters(folders, tmp_path_factory):
    """{"lora": a diffusers-format LoRA file on the text folder's UNet and SD text encoder (peft, random A and B,
    rank / alpha patterns of tests/test_sd_lora.py), "ti": a two-vector textual-inversion file of token <cat-toy>}."""
    import transformers as tf

    from safetensors.torch import save_file
    from test_sd_lora import save_unet_text_lora
    root, path = tmp_path_factory.mktemp("stable_unclip_adapters"), folders["text"][1]
    unet = diffusers.UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
    text = tf.CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
    lora = save_unet_text_lora(root, unet, text, 1, diffusers.StableUnCLIPPipeline)
    width = text.get_input_embeddings().weight.shape[1]
    save_file({"<cat-toy>": torch.randn(2, width, generator=torch.Generator().manual_seed(5)) * 0.5},
              root / "ti.safetensors")
    return {"lora": lora, "ti": root / "ti.safetensors", "width": width}


def _fresh_pipeline(path):
    pipe = diffusers.StableUnCLIPPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("case", ["lora", "ti"])
def test_lora_and_textual_inversion_match_the_pipeline(folders, adapters, case):
    """--lora FILE:0.7 as the pipeline's ``load_lora_weights`` + ``fuse_lora(lora_scale=0.7)`` (the UNet and the SD
    text encoder; the prior's text encoder untouched on both sides), a two-vector --textual-inversion as its
    ``load_textual_inversion`` (the prompt expanded for the SD text encoder; the prior reads it as written): the final
    latents of two prompts, noise level 100, DDIM eta 0.5."""
    base_pipe, path, base = folders["text"]
    prior_text = _state(base.prior.text_encoder)
    pipe = _fresh_pipeline(path)
    if case == "lora":
        pipe.load_lora_weights(str(adapters["lora"]))
        pipe.fuse_lora(lora_scale=0.7)
        model = unclip.load_stable_unclip(path, progress=False, lora=[(adapters["lora"], 0.7)])
        prompts = PROMPTS
    else:
        pipe.load_textual_inversion(str(adapters["ti"]))
        model = unclip.load_stable_unclip(path, progress=False, textual_inversion=[(adapters["ti"], None)])
        prompts = ["a <cat-toy> photo", "hot <cat-toy>"]
    common = dict(num_inference_steps=STEPS, prior_num_inference_steps=PRIOR_STEPS, noise_level=100, eta=0.5,
                  guidance_scale=6.0)
    with torch.no_grad():
        theirs = pipe(prompts, generator=_generators(3, 2), output_type="latent", **common).images
    ours = unclip.stable_unclip(model, prompts, steps=STEPS, prior_steps=PRIOR_STEPS, noise_level=100, eta=0.5,
                                guidance_scale=6.0, seed=3, return_latents=True)
    print(case, "latents", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    without = unclip.stable_unclip(base, prompts, steps=STEPS, prior_steps=PRIOR_STEPS, noise_level=100, eta=0.5,
                                   guidance_scale=6.0, seed=3, return_latents=True)
    assert relative_error(ours, without) > 1e-2  # the file matters
    for state in (_state(pipe.prior_text_encoder), _state(model.prior.text_encoder)):
        assert all(torch.equal(state[k], v) for k, v in prior_text.items())
    if case == "lora":  # both parts merged: the SD text encoder changed too
        changed = _state(model.text_encoder)
        assert any(not torch.equal(changed[k], v) for k, v in _state(base.text_encoder).items())
    assert len(base.tokenizer) == len(base_pipe.tokenizer)  # the shared fixture left as it was


def test_img2img_lora_matches_the_pipeline(folders, adapters):
    """The same LoRA file (the folders share the UNet and text encoder) at scale 0.7 on the img2img folder: one
    picture for both prompts, noise level 250, the folder's DDIM loop: the final latents."""
    from PIL import Image
    _, path, _ = folders["image"]
    pipe = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(adapters["lora"]))
    pipe.fuse_lora(lora_scale=0.7)
    model = unclip.load_stable_unclip(path, progress=False, lora=[(adapters["lora"], 0.7)])
    picture = Image.open(folders["pngs"][0]).convert("RGB")
    with torch.no_grad():
        theirs = pipe([picture] * 2, PROMPTS, generator=_generators(7, 2), output_type="latent",
                      num_inference_steps=STEPS, noise_level=250, guidance_scale=5.0).images
    ours = unclip.stable_unclip(model, PROMPTS, images=folders["pngs"][0], steps=STEPS, noise_level=250,
                                guidance_scale=5.0, seed=7, return_latents=True)
    print("img2img lora latents", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5


def test_diffkit_sample_with_lora_and_textual_inversion(folders, adapters, tmp_path, capsys):
    """--lora FILE:0.5 --textual-inversion FILE:<tok> on the text folder: the library's PNG bytes (one row); bad files
    (a LoRA matrix of the wrong shape, junk, an embedding of another width, a missing file) one line, no output."""
    from PIL import Image
    from safetensors.torch import load_file, save_file
    _, path, _ = folders["text"]
    base = ["sample", "--checkpoint", str(path), "--num", "1", "--steps", str(STEPS), "--prior-steps",
            str(PRIOR_STEPS), "--seed", "4", "--no-progress"]
    assert main([*base, "--prompt", "hot <tok>", "--out", str(tmp_path / "grid.png"), "--individual",
                 str(tmp_path / "one"), "--lora", f"{adapters['lora']}:0.5", "--textual-inversion",
                 f"{adapters['ti']}:<tok>"]) == 0
    capsys.readouterr()
    model = unclip.load_stable_unclip(path, progress=False, lora=[(adapters["lora"], 0.5)],
                                      textual_inversion=[(adapters["ti"], "<tok>")])
    theirs = _library_rows(model, ["hot <tok>"], 4, steps=STEPS, prior_steps=PRIOR_STEPS)
    ours = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "one").glob("*.png"))])
    assert np.array_equal(ours, theirs)
    tensors = load_file(adapters["lora"])
    key = next(k for k in tensors if k.startswith("unet.") and "lora_A" in k)
    save_file({**tensors, key: torch.zeros(tensors[key].shape[0], 5)}, tmp_path / "shape.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"<w>": torch.zeros(adapters["width"] + 1)}, tmp_path / "width.safetensors")
    for flag, name, needle in (("--lora", "shape", "does not fit this network"),
                               ("--lora", "junk", "is not a safetensors LoRA file"),
                               ("--textual-inversion", "width", f"has width {adapters['width'] + 1}; this text "
                                                                f"encoder's token embeddings have width"),
                               ("--textual-inversion", "missing", "does not exist")):
        code = main([*base, "--prompt", "x", "--out", str(tmp_path / "o" / "g.png"), flag,
                     str(tmp_path / f"{name}.safetensors")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (name, err)
        assert not (tmp_path / "o").exists(), name


@pytest.mark.parametrize("sampler, scheduler", [("euler", "EulerDiscreteScheduler"),
                                                ("dpm-solver++-2m", "DPMSolverMultistepScheduler")])
def test_a_given_sampler_matches_the_pipeline_with_that_scheduler(folders, sampler, scheduler):
    """``sampler=`` on the folder's timesteps (as ``diffkit sample --sampler S --steps N`` runs it) against the
    pipeline with ``pipe.scheduler = Scheduler.from_config(pipe.scheduler.config)`` (v-prediction, SD 2.1's DDIM
    config): the final latents of two prompts."""
    pipe, _, model = folders["text"]
    own = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(own.config)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS, generator=_generators(3, 2), output_type="latent", num_inference_steps=STEPS,
                          prior_num_inference_steps=PRIOR_STEPS, noise_level=100, guidance_scale=6.0).images
    finally:
        pipe.scheduler = own
    import dataclasses
    swapped = dataclasses.replace(model, scheduler_config={**getattr(diffusers, scheduler).from_config(
        own.config).config, "_class_name": scheduler})
    assert swapped.folder_sampler()[0] == sampler
    ours = unclip.stable_unclip(swapped, PROMPTS, sampler=sampler, grid="scheduler", steps=STEPS,
                                prior_steps=PRIOR_STEPS, noise_level=100, guidance_scale=6.0, seed=3,
                                return_latents=True, **swapped.folder_sampler()[1])
    print(sampler, "latents", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5


def test_nfe_is_ddim_on_diffkits_grid_as_the_pipeline_with_that_ddim(folders, tmp_path, capsys):
    """``nfe=3`` / ``diffkit sample --nfe 3`` on the text folder: the NFE rule picks 3 DDIM steps on diffkit's grid
    (666, 333, 0, then alpha = 1), which is the pipeline with ``DDIMScheduler.from_config(config, steps_offset=0,
    set_alpha_to_one=True)`` at 3 steps: the final latents of two prompts; the command writes the library's PNG."""
    from PIL import Image
    pipe, path, model = folders["text"]
    own = pipe.scheduler
    pipe.scheduler = diffusers.DDIMScheduler.from_config(own.config, steps_offset=0, set_alpha_to_one=True)
    try:
        with torch.no_grad():
            theirs = pipe(PROMPTS, generator=_generators(3, 2), output_type="latent", num_inference_steps=3,
                          prior_num_inference_steps=PRIOR_STEPS, noise_level=100, guidance_scale=6.0).images
    finally:
        pipe.scheduler = own
    ours = unclip.stable_unclip(model, PROMPTS, nfe=3, prior_steps=PRIOR_STEPS, noise_level=100, guidance_scale=6.0,
                                seed=3, return_latents=True)
    folder_loop = unclip.stable_unclip(model, PROMPTS, steps=3, prior_steps=PRIOR_STEPS, noise_level=100,
                                       guidance_scale=6.0, seed=3, return_latents=True)
    with capsys.disabled():  # (capsys: the command's output)
        print("nfe latents", relative_error(ours, theirs), "folder's loop", relative_error(folder_loop, theirs))
    assert relative_error(ours, theirs) < 1e-5 and relative_error(folder_loop, theirs) > 1e-2
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[1], "--num", "1", "--nfe", "3",
                 "--prior-steps", str(PRIOR_STEPS), "--seed", "4", "--out", str(tmp_path / "grid.png"),
                 "--individual", str(tmp_path / "one"), "--no-progress"]) == 0
    assert "ddim on its diffkit grid" in capsys.readouterr().out
    expected = _library_rows(model, PROMPTS[1:], 4, nfe=3, prior_steps=PRIOR_STEPS)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / "sample_00000.png"))[None], expected)


def test_img2img_textual_inversion_matches_the_pipeline(folders, adapters, tmp_path, capsys):
    """The two-vector textual inversion of TUC6 on the img2img folder (one picture, the token in both prompts, noise
    level 250): the final latents of ``StableUnCLIPImg2ImgPipeline.load_textual_inversion``; ``diffkit sample
    --image PNG --textual-inversion FILE`` writes the library's PNG."""
    from PIL import Image
    _, path, _ = folders["image"]
    pipe = diffusers.StableUnCLIPImg2ImgPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(adapters["ti"]))
    model = unclip.load_stable_unclip(path, progress=False, textual_inversion=[(adapters["ti"], None)])
    prompts, picture = ["a <cat-toy> photo", "hot <cat-toy>"], Image.open(folders["pngs"][0]).convert("RGB")
    with torch.no_grad():
        theirs = pipe([picture] * 2, prompts, generator=_generators(7, 2), output_type="latent",
                      num_inference_steps=STEPS, noise_level=250, guidance_scale=5.0).images
    ours = unclip.stable_unclip(model, prompts, images=folders["pngs"][0], steps=STEPS, noise_level=250,
                                guidance_scale=5.0, seed=7, return_latents=True)
    without = unclip.stable_unclip(folders["image"][2], prompts, images=folders["pngs"][0], steps=STEPS,
                                   noise_level=250, guidance_scale=5.0, seed=7, return_latents=True)
    with capsys.disabled():  # (capsys: the command's output)
        print("img2img ti latents", relative_error(ours, theirs), "without the file", relative_error(without, theirs))
    assert relative_error(ours, theirs) < 1e-5 and relative_error(without, theirs) > 1e-2
    assert main(["sample", "--checkpoint", str(path), "--image", str(folders["pngs"][0]), "--prompt", prompts[1],
                 "--num", "1", "--steps", str(STEPS), "--seed", "4", "--textual-inversion", str(adapters["ti"]),
                 "--out", str(tmp_path / "grid.png"), "--individual", str(tmp_path / "one"), "--no-progress"]) == 0
    capsys.readouterr()
    expected = _library_rows(model, prompts[1:], 4, images=folders["pngs"][0], steps=STEPS)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / "sample_00000.png"))[None], expected)
