"""FLUX.2 folders (diffkit.interop.flux2): diffkit's text_to_image against diffusers' own Flux2Pipeline and
Flux2KleinPipeline on tiny random folders (tests/_flux2_helpers.py; nothing downloaded), ``diffkit sample`` on them
(the library's grid byte for byte) and the one-line refusals."""
import json
import math
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.flux import is_flux_folder  # noqa: E402
from diffkit.interop.flux2 import (check_flux2_folder, empirical_mu, is_flux2_folder, load_flux2,  # noqa: E402
                                   text_to_image)

from _flux2_helpers import tiny_flux2_pipeline, tiny_klein_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of cat", "hot dog"]
LENGTH, SIZE = 80, 32  # max_sequence_length (the prompts after the system message fit); pixels (latents 8 x 8)


def _folder(tmp_path_factory, name, build, cls):
    path = tmp_path_factory.mktemp(name) / name
    build().save_pretrained(path)
    return reloaded(path, cls, load_flux2)


@pytest.fixture(scope="session")
def flux2_folder(tmp_path_factory):
    """(Flux2Pipeline loaded back, folder, Flux2) of the tiny Flux2Pipeline folder, built on first use."""
    return _folder(tmp_path_factory, "flux2", tiny_flux2_pipeline, diffusers.Flux2Pipeline)


@pytest.fixture(scope="session")
def klein_folder(tmp_path_factory):
    """(Flux2KleinPipeline loaded back, folder, Flux2) of the tiny Flux2KleinPipeline folder."""
    return _folder(tmp_path_factory, "klein", tiny_klein_pipeline, diffusers.Flux2KleinPipeline)


@pytest.fixture(scope="session")
def klein_kv_folder(tmp_path_factory):
    """(Flux2KleinKVPipeline loaded back, folder, Flux2): the tiny Klein folder's components in that pipeline."""
    return _folder(tmp_path_factory, "klein_kv", lambda: diffusers.Flux2KleinKVPipeline(
        **tiny_klein_pipeline().components), diffusers.Flux2KleinKVPipeline)


def _noise(size=SIZE):
    return torch.randn(2, 16, size // 4, size // 4, generator=torch.Generator().manual_seed(1))


def _theirs(pipe, noise, steps=3, **call):
    with torch.no_grad():
        return pipe(prompt=PROMPTS, num_inference_steps=steps, latents=noise.clone(), height=noise.shape[2] * 4,
                    width=noise.shape[3] * 4, max_sequence_length=LENGTH, **{"output_type": "latent", **call}).images


def _ours(model, noise, steps=3, **call):
    return text_to_image(model, PROMPTS, steps=steps, latents=noise, max_sequence_length=LENGTH,
                         **{"return_latents": True, **call})


def test_flux2_pipeline_encodes_and_samples_as_diffusers(flux2_folder):
    """Mistral-3's chat with the system message, its states 10, 20, 30 stacked; the embedded guidance (default 4.0
    and 2.5); the packed latents (output_type="latent"), the decoded images, and the per-sample seeds."""
    pipe, path, flux2 = flux2_folder
    assert is_flux2_folder(path) and not is_flux_folder(path) and flux2.latent_shape(1) == (1, 16, 64, 64)
    theirs = pipe.encode_prompt(PROMPTS, max_sequence_length=LENGTH)[0]
    assert torch.equal(flux2.encode_prompts(PROMPTS, LENGTH), theirs)
    noise = _noise()
    for steps, call in ((3, {}), (4, {"guidance_scale": 2.5})):
        ours, theirs = _ours(flux2, noise, steps, **call), _theirs(pipe, noise, steps, **call)
        error = relative_error(ours.flatten(2).transpose(1, 2), theirs)  # the pipeline's packing: a reshape
        print("Flux2Pipeline latents", call, error)
        assert error < 1e-5  # measured: see docs/interop.md
    ours, theirs = _ours(flux2, noise, return_latents=False), _theirs(pipe, noise, output_type="pt")
    print("Flux2Pipeline images", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    seeded = text_to_image(flux2, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                           return_latents=True)
    with torch.no_grad():
        theirs = pipe(prompt=PROMPTS, num_inference_steps=2, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], output_type="latent").images
    assert relative_error(seeded.flatten(2).transpose(1, 2), theirs) < 1e-5


def test_klein_pipeline_guides_as_diffusers(klein_folder):
    """Qwen3's chat (generation prompt, no thinking), its states 9, 18, 27; CFG against "" (default 4.0), against a
    negative prompt (the pipeline's negative_prompt_embeds of it), unguided at s = 1 and for a distilled folder; the
    VAE latents (Klein's output_type="latent": batch norm undone, unpatchified)."""
    pipe, path, klein = klein_folder
    assert is_flux2_folder(path) and klein.klein and not klein.distilled
    theirs = pipe.encode_prompt(PROMPTS, max_sequence_length=LENGTH)[0]
    assert torch.equal(klein.encode_prompts(PROMPTS, LENGTH), theirs)
    noise = _noise()
    negative = pipe.encode_prompt(["ugly"] * 2, max_sequence_length=LENGTH)[0]
    for ours_call, their_call in (({}, {}), ({"negative_prompt": "ugly", "guidance_scale": 3.0},
                                             {"negative_prompt_embeds": negative, "guidance_scale": 3.0}),
                                  ({"guidance_scale": 1.0}, {"guidance_scale": 1.0})):
        error = relative_error(klein.vae_latents(_ours(klein, noise, **ours_call)), _theirs(pipe, noise, **their_call))
        print("Flux2KleinPipeline latents", ours_call, error)
        assert error < 1e-5
    ours, theirs = _ours(klein, noise, return_latents=False), _theirs(pipe, noise, output_type="pt")
    print("Flux2KleinPipeline images", relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    pipe.register_to_config(is_distilled=True)
    klein.distilled = True
    try:
        assert relative_error(klein.vae_latents(_ours(klein, noise)), _theirs(pipe, noise)) < 1e-5
        with pytest.raises(DiffkitError, match="is_distilled true"):
            _ours(klein, noise, guidance_scale=2.0)
        with pytest.raises(DiffkitError, match="feeds only CFG"):
            _ours(klein, noise, negative_prompt="ugly")
    finally:
        pipe.register_to_config(is_distilled=False)
        klein.distilled = False


def test_flux2_shift_follows_size_and_steps(flux2_folder):
    """mu = compute_empirical_mu(h w, N) (both pipelines'), e^mu the flow shift of a diffkit sampler's own grid at
    that size and step count; another sampler runs there."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
    _, _, flux2 = flux2_folder
    for tokens, steps in ((64, 3), (4096, 50), (5000, 28)):
        assert empirical_mu(tokens, steps) == compute_empirical_mu(tokens, steps)
    assert flux2.shift(8, 8, 3) == pytest.approx(math.exp(compute_empirical_mu(64, 3)), rel=1e-12)
    assert flux2.shift(8, 8, 3) != flux2.shift(8, 8, 50)
    out = _ours(flux2, _noise(), 3, sampler="unipc")
    assert out.shape == (2, 16, 8, 8) and bool(torch.isfinite(out).all())


def test_sample_command_writes_the_library_grid(flux2_folder, klein_folder, tmp_path, capsys):
    """``diffkit sample`` on both folders: text_to_image's grid byte for byte (Flux2Pipeline: --guidance-scale as
    the embedded value; Klein: CFG against --negative-prompt); what does not apply: one line, no file."""
    for (pipe, path, model), extra, call in (
            (flux2_folder, ["--guidance-scale", "2.5"], {"guidance_scale": 2.5}),
            (klein_folder, ["--negative-prompt", "ugly", "--guidance-scale", "3", "--guidance-convention", "diffusers"],
             {"negative_prompt": "ugly", "guidance_scale": 3.0})):
        out = tmp_path / f"{model.pipeline}.png"
        assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                     "--nrow", "1", "--steps", "2", "--seed", "5", "--height", str(SIZE), "--width", str(SIZE),
                     "--max-sequence-length", str(LENGTH), "--batch-size", "2", "--out", str(out),
                     "--no-progress"] + extra) == 0
        images = text_to_image(model, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                               output_range="-1,1", **call)
        save_grid(images, tmp_path / "expected.png", 1)
        assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    size = ["--height", str(SIZE), "--width", str(SIZE)]
    assert_sample_refusals(main, flux2_folder[1], tmp_path, capsys, [
        (["--negative-prompt", "ugly"] + size, "not allowed for a Flux2Pipeline folder"),
        (["--lora", "x.safetensors"], "--lora x.safetensors does not exist"),
        (["--true-cfg-scale", "2"], "--true-cfg-scale does not apply to a FLUX.2 folder"),
        (["--pag-scale", "2"], "--pag-scale does not apply to a FLUX.2 folder"),
        (["--height", "30"], "--height 30 is not allowed; give a positive multiple of 4")], label="a FLUX.2")


def test_flux2_folder_refusals(flux2_folder, tmp_path):
    """What diffkit does not drive, from the JSON alone, and bad library arguments: one line each."""
    _, path, flux2 = flux2_folder
    copy = tmp_path / "copy"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (copy / part).mkdir(parents=True)
        for name in ("config.json", "scheduler_config.json"):
            if (path / part / name).exists():
                shutil.copy(path / part / name, copy / part / name)
    shutil.copy(path / "model_index.json", copy / "model_index.json")
    check_flux2_folder(copy)
    for file, key, value, expected in (
            ("model_index.json", "_class_name", "Flux2KleinInpaintPipeline", "which diffkit does not drive"),
            ("model_index.json", "vae", ["diffusers", "AutoencoderKL"], "allowed: AutoencoderKLFlux2"),
            ("model_index.json", "text_encoder", ["transformers", "Qwen3ForCausalLM"],
             "allowed: Mistral3ForConditionalGeneration"),
            ("transformer/config.json", "in_channels", 64, "4 x the VAE's latent channels"),
            ("scheduler/scheduler_config.json", "invert_sigmas", True, "allowed: invert_sigmas=false")):
        config = json.loads((copy / file).read_text())
        (copy / file).write_text(json.dumps({**config, key: value}))
        with pytest.raises(DiffkitError, match=expected) as error:
            check_flux2_folder(copy)
        assert "\n" not in str(error.value)
        (copy / file).write_text(json.dumps(config))
    tiny_klein_pipeline(layers=2).save_pretrained(tmp_path / "short")  # Qwen3 of 2 layers: no states 9, 18, 27
    with pytest.raises(DiffkitError, match="the text encoder has 2 layers of width 16; Flux2KleinPipeline stacks"):
        load_flux2(tmp_path / "short", progress=False)
    for call, expected in (({"max_sequence_length": 0}, "allowed: 1..512"), ({"height": 30}, "multiples of 4"),
                           ({"guidance_scale": float("nan")}, "give a finite number")):
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(flux2, "a", steps=1, **{"height": SIZE, "width": SIZE, **call})


def _reference_pngs(root):
    """Two random RGB PNGs of 72 x 96 and 64 x 64 pixels (the processor's smallest side is 64)."""
    import numpy as np
    from PIL import Image
    rng, paths = np.random.default_rng(0), []
    for i, shape in enumerate([(72, 96, 3), (64, 64, 3)]):
        paths.append(root / f"ref{i}.png")
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(paths[-1])
    return paths


def test_reference_images_are_the_pipelines_image_list(flux2_folder, klein_folder, tmp_path):
    """``image=[...]`` of both pipelines: two references (the output at the first one's processed size, 72 x 96;
    Klein with its CFG), and (Flux2Pipeline) one at a given size."""
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in _reference_pngs(tmp_path)]
    for pipe, path, model in (flux2_folder, klein_folder):
        def pair(refs, **size):
            with torch.no_grad():
                theirs = pipe(prompt=PROMPTS, image=refs, num_inference_steps=2, max_sequence_length=LENGTH,
                              generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                              output_type="latent", **size).images
            ours = text_to_image(model, PROMPTS, steps=2, seed=5, references=refs, max_sequence_length=LENGTH,
                                 return_latents=True, **size)
            return ours.flatten(2).transpose(1, 2) if not model.klein else model.vae_latents(ours), theirs
        for refs, size in ((images, {}), (images[1:], {"height": 32, "width": 48}))[:1 + (not model.klein)]:
            ours, theirs = pair(refs, **size)
            print(model.pipeline, "references", len(refs), size, relative_error(ours, theirs))
            assert relative_error(ours, theirs) < 1e-5


def test_sample_command_takes_reference_images(flux2_folder, tmp_path, capsys):
    """``diffkit sample --reference-image`` writes the library's grid; a small image, a file that is no image and
    another checkpoint kind: one line, no file."""
    from PIL import Image
    paths = _reference_pngs(tmp_path)
    _, path, flux2 = flux2_folder
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "1", "--steps", "2",
                 "--seed", "5", "--max-sequence-length", str(LENGTH), "--batch-size", "1", "--reference-image",
                 str(paths[1]), "--height", str(SIZE), "--width", str(SIZE), "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(flux2, PROMPTS[:1], steps=2, seed=5, references=paths[1:], height=SIZE, width=SIZE,
                            max_sequence_length=LENGTH, output_range="-1,1"), tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    Image.new("RGB", (32, 64)).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("no image")
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--reference-image", str(tmp_path / "small.png")], "reference image 0 is not allowed: Image too small"),
        (["--reference-image", str(tmp_path / "text.png")], "cannot be read as an image")])
    assert_sample_refusals(main, tmp_path, tmp_path, capsys, [
        (["--reference-image", str(paths[0])], "--reference-image applies to a FLUX.2 folder")])


FLUX2_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "add_k_proj", "to_qkv_mlp_proj", "to_out.0", "linear_in",
                                                       "x_embedder", "double_stream_modulation_img.linear"],
                  rank_pattern={"to_q": 2}, alpha_pattern={"linear_in": 3.0})


def test_flux2_lora_is_load_lora_weights_and_fuse_lora(flux2_folder, tmp_path, capsys):
    """A diffusers-format file (Flux2Pipeline.save_lora_weights; rank / alpha patterns) at 0.3: load_lora_weights +
    fuse_lora's weights and z_0; ``diffkit sample --lora`` is the library; a kohya key diffusers leaves out: one
    line."""
    import copy
    from diffkit.interop.flux2_lora import read_flux2_loras
    from diffkit.interop.qwen_image_lora import transformer_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    from test_sd_lora import check_transformer_lora, fused_transformer_lora
    _, path, flux2 = flux2_folder
    lora, pipe = fused_transformer_lora(diffusers.Flux2Pipeline, path, tmp_path, FLUX2_LORA, scale=0.3,
                                        loaded=flux2_folder[0])
    ours = copy.deepcopy(flux2)  # load_flux2(path, lora=...)'s merge (the command loads the folder so)
    merge_sd_loras(ours, transformer_loras(read_flux2_loras([(lora, 0.3)]), ours.transformer, "FLUX.2"))
    worst = check_transformer_lora(path, lora, 0.3, ours, flux2, pipe, text_to_image, tmp_path, capsys,
                                   "lora_unet_double_blocks_0_img_mod_lin.lora_down.weight",
                                   "a FLUX.2 folder (diffusers logs it as unsupported")
    noise = _noise()
    error = relative_error(_ours(ours, noise).flatten(2).transpose(1, 2), _theirs(pipe, noise))
    print("FLUX.2 LoRA weights", worst, "z_0", error)
    assert worst < 1e-6 and error < 1e-5  # measured: see docs/interop.md


BFL_MODULES = ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.txt_attn.proj",
               "double_blocks.0.img_mlp.0", "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1",
               "single_blocks.0.linear2", "img_in", "time_in.out_layer", "final_layer.linear"]
AI_TOOLKIT_ONLY = ["guidance_in.in_layer", "double_stream_modulation_img.lin", "single_stream_modulation.lin"]


def _bfl_file(transformer, kind: str) -> dict:
    """A random rank-4 LoRA on :data:`BFL_MODULES` under BFL's names as ``kind`` writes them (``ai-toolkit``:
    diffusion_model. lora_A / lora_B, also its modulation / guidance modules; ``peft``: the same under
    base_model.model.; ``expanded``: diffusion_model. on diffusers' own block names; ``kohya``: lora_unet_ with
    .alpha 2 on the qkv modules)."""
    from diffkit.interop.flux2_lora import bfl_targets
    layers = dict(transformer.named_modules())
    gen, out = torch.Generator().manual_seed(3), {}
    for module in BFL_MODULES + (AI_TOOLKIT_ONLY if kind != "kohya" else []):
        targets = bfl_targets(module, False)
        if kind == "expanded":
            if "blocks" not in module:
                continue
            targets, module = targets[:1], targets[0]
        a = torch.randn(4, layers[targets[0]].in_features, generator=gen) * 0.3
        b = torch.randn(sum(layers[t].out_features for t in targets), 4, generator=gen) * 0.3
        if kind == "kohya":
            name = "lora_unet_" + module.replace(".", "_")
            out.update({f"{name}.lora_down.weight": a, f"{name}.lora_up.weight": b})
            if "qkv" in module:
                out[f"{name}.alpha"] = torch.tensor(2.0)
        else:
            name = ("base_model.model." if kind == "peft" else "diffusion_model.") + module
            out.update({f"{name}.lora_A.weight": a, f"{name}.lora_B.weight": b})
    return out


@pytest.mark.parametrize("kind", ["ai-toolkit", "peft", "expanded", "kohya"])
def test_flux2_converted_lora_files_are_diffusers_conversions(flux2_folder, tmp_path, kind):
    """ai-toolkit (BFL names: fused qkv split in three, the fused single-block linear1 kept), PEFT, diffusers-named
    and kohya (.alpha) files: the weights of Flux2Pipeline.load_lora_weights + fuse_lora(lora_scale=0.7)."""
    from safetensors.torch import save_file
    from diffkit.interop.flux2_lora import read_flux2_loras
    from test_sd_lora import converted_lora_difference
    pipe, _, flux2 = flux2_folder
    file = tmp_path / f"{kind}.safetensors"
    save_file(_bfl_file(flux2.transformer, kind), file)
    worst, changes = converted_lora_difference(pipe, flux2, file, read_flux2_loras, "FLUX.2")
    assert sum(change > 0 for change in changes.values()) >= (7 if kind == "expanded" else 14)
    print("FLUX.2 LoRA", kind, worst)
    assert worst < 1e-6  # measured: see docs/interop.md


@pytest.mark.parametrize("tensors,expected", [
    ({"diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight": torch.ones(2, 8)},
     "key 'diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight' is not supported on a FLUX.2 folder "
     "(final_layer.adaLN_modulation.1: diffusers' LoRA conversion keeps BFL's (shift, scale) order"),
    ({"diffusion_model.img_in.lora_A.weight": torch.ones(2, 8), "diffusion_model.img_in.alpha": torch.tensor(2.0)},
     "key 'diffusion_model.img_in.alpha' is not supported on a FLUX.2 folder (an ai-toolkit file"),
    ({"lora_unet_img_in.lora_down.weight": torch.ones(2, 8), "lora_te1_x.lora_up.weight": torch.ones(8, 2)},
     "key 'lora_te1_x.lora_up.weight' is not supported on a FLUX.2 folder (a kohya file"),
    ({"diffusion_model.final_layer.adaLN_modulation.1.lokr_w1": torch.ones(8, 4)},
     "(final_layer.adaLN_modulation.1: diffusers' LoKr conversion keeps BFL's (shift, scale) order"),
    ({"lycoris_x_embedder.lokr_w1": torch.ones(4, 4)}, "(a LyCORIS file: diffusers maps lycoris_{single_,}"),
    ({"transformer.x_embedder.lokr_w1": torch.ones(4, 4), "transformer.x_embedder.alpha": torch.tensor(2.0)},
     "key 'transformer.x_embedder.alpha' is not supported on a FLUX.2 folder (an .alpha in a transformer. LoKr"),
    ({"x_embedder.lokr_w1": torch.ones(4, 4), "x_embedder.lokr_w2": torch.ones(8, 4),
      "x_embedder.lora_A.weight": torch.ones(2, 16)}, "key 'x_embedder.lora_A.weight' is not supported on a FLUX.2 "
                                                      "folder (a LoKr file's keys end in .lokr_w1 /"),
    ({"x_embedder.lokr_w1": torch.ones(4, 4), "x_embedder.lokr_t2": torch.ones(2, 2, 1, 1)},
     "(a LoKr Tucker core, which diffusers' conversion does not carry"),
    ({"transformer_blocks.0.attn.to_qkv.lokr_w1": torch.ones(8, 4), "transformer_blocks.0.attn.to_qkv.lokr_w2":
      torch.ones(12, 8), "transformer_blocks.0.attn.add_k_proj.lokr_w1": torch.ones(4, 4),
      "transformer_blocks.0.attn.add_k_proj.lokr_w2": torch.ones(8, 8)},
     "module transformer_blocks_0_attn_add_k_proj is an unfused q / k / v projection, and "),
    ({"diffusion_model.img_in.hada_w1_a": torch.ones(32, 2)},
     "(a LyCORIS LoHa tensor: diffusers 0.42.1's Flux2LoraLoaderMixin converts LoRA and LoKr files, no LoHa)"),
    ({"text_encoder.x.lora_A.weight": torch.ones(2, 8)}, "(Flux2Pipeline's loader adapts the transformer only"),
    ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.ones(32, 2)},
     "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight is (32, 2); allowed: (3 n, r)"),
    ({"diffusion_model.single_blocks.7.linear2.lora_A.weight": torch.ones(2, 8),
      "diffusion_model.single_blocks.7.linear2.lora_B.weight": torch.ones(8, 2)},
     "key 'diffusion_model.single_blocks.7.linear2.lora_A.weight' names no Linear layer of the FLUX.2 transformer")])
def test_flux2_lora_refusals(flux2_folder, tmp_path, tensors, expected):
    """What diffusers does not load as the file says, or diffkit does not map: one line naming the key."""
    from test_sd_lora import assert_lora_refused
    assert_lora_refused(load_flux2, flux2_folder[1], tmp_path, tensors, expected)


LOKR_BFL = {"double_blocks.0.img_attn.qkv": 2, "double_blocks.0.txt_attn.qkv": None, "double_blocks.0.img_mlp.0": 2,
            "double_blocks.0.txt_attn.proj": 3, "single_blocks.0.linear1": 3, "img_in": None,
            "guidance_in.in_layer": 2}  # BFL module: LoKr rank (None: W1 and W2 full)
LOKR_DIFFUSERS = {"transformer_blocks.0.attn.to_qkv": 2, "transformer_blocks.0.attn.to_add_out": None,
                  "transformer_blocks.0.ff_context.linear_out": 3, "single_transformer_blocks.0.attn.to_out": 2,
                  "x_embedder": 2, "proj_out": None}  # diffusers' names (to_qkv: the fused projection)


def _lokr_file(transformer, kind: str) -> dict:
    """A LoKr file as ``kind`` writes it (module doc of diffkit.interop.flux2_lora): ``ai-toolkit`` BFL names under
    diffusion_model. with .alpha 3, ``peft`` the same under base_model.model. (W1 factorised too), ``lycoris``
    lycoris_ block keys with .alpha, ``bare`` diffusers' names with .alpha 4, ``transformer.`` peft's keys."""
    from diffkit.interop.flux2_lora import bfl_targets
    from _lokr_helpers import lokr_file
    layers = dict(transformer.named_modules())

    def shape(names):
        return sum(layers[n].out_features for n in names), layers[names[0]].in_features
    if kind in ("ai-toolkit", "peft"):
        prefix = "diffusion_model." if kind == "ai-toolkit" else "base_model.model."
        modules = {prefix + m: (*shape(bfl_targets(m, False)), r) for m, r in LOKR_BFL.items()}
        return lokr_file(modules, 4, both=kind == "peft", alpha=3.0 if kind == "ai-toolkit" else None)
    fused = {"transformer_blocks.0.attn.to_qkv": [f"transformer_blocks.0.attn.to_{p}" for p in "qkv"]}
    modules = {m: (*shape(fused.get(m, [m])), r) for m, r in LOKR_DIFFUSERS.items()}
    if kind == "lycoris":
        modules = {"lycoris_" + m.replace(".", "_"): v for m, v in modules.items() if "blocks" in m and m not in fused}
    return lokr_file({("transformer." if kind == "transformer." else "") + m: v for m, v in modules.items()}, 5,
                     alpha=None if kind == "transformer." else 4.0 if kind == "bare" else 1.0)


@pytest.mark.parametrize("kind", ["ai-toolkit", "peft", "lycoris", "bare", "transformer."])
def test_flux2_lokr_files_are_diffusers_conversions(flux2_folder, tmp_path, kind):
    """LyCORIS LoKr files in the five layouts Flux2LoraLoaderMixin converts (a fused qkv on the stacked to_q / to_k /
    to_v, as diffusers fuses the model's projections): the weights of load_lora_weights + fuse_lora(lora_scale=0.7)."""
    from safetensors.torch import save_file
    from diffkit.interop.flux2_lora import read_flux2_loras
    from test_sd_lora import converted_lora_difference
    pipe, _, flux2 = flux2_folder
    file = tmp_path / f"{kind}.safetensors"
    save_file(_lokr_file(flux2.transformer, kind), file)
    worst, changes = converted_lora_difference(pipe, flux2, file, read_flux2_loras, "FLUX.2")
    assert sum(change > 1e-3 for change in changes.values()) == {"ai-toolkit": 11, "peft": 11, "lycoris": 3}.get(
        kind, 8)
    print("FLUX.2 LoKr", kind, worst)
    assert worst < 1e-6  # measured: see docs/interop.md


def test_flux2_lokr_file_samples_as_the_pipeline(flux2_folder, tmp_path):
    """An ai-toolkit LoKr file (fused qkv) at scale 1: z_0 of Flux2Pipeline with the file loaded (peft's LoKr layers,
    unmerged, on the fused projections) against diffkit's merged transformer."""
    import copy
    from safetensors.torch import save_file
    from diffkit.interop.flux2_lora import read_flux2_loras
    from diffkit.interop.qwen_image_lora import transformer_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, _, flux2 = flux2_folder
    file = tmp_path / "lokr.safetensors"
    save_file(_lokr_file(flux2.transformer, "ai-toolkit"), file)
    theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(file))
    ours = copy.deepcopy(flux2)
    merge_sd_loras(ours, transformer_loras(read_flux2_loras([file]), ours.transformer, "FLUX.2"))
    noise = _noise()
    expected = _theirs(theirs, noise)
    error = relative_error(_ours(ours, noise).flatten(2).transpose(1, 2), expected)
    print("FLUX.2 LoKr z_0", error, float((expected - _theirs(pipe, noise)).abs().max()))
    assert error < 1e-5  # measured: see docs/interop.md


def _inpaint_inputs(root):
    """Two random 32 x 48 RGB PNGs (a folder), a mask whose edges cross latent cells (bilinear: 1/2 there) and a
    40 x 24 reference PNG; (folder, mask path, reference path, images in [-1, 1], mask in [0, 1])."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    mask = np.zeros((32, 48), np.uint8)
    mask[5:22, 9:30] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(root / "ref.png")
    from diffkit.commands.edit import read_mask, read_pngs
    images = read_pngs(root / "images", "RGB")[0]
    return root / "images", root / "mask.png", root / "ref.png", images, read_mask(root / "mask.png", images)


def test_klein_inpainting_is_flux2_klein_inpaint_pipeline(klein_folder, tmp_path):
    """Flux2KleinInpaintPipeline's z_0 (output_type="latent") from the same seeds: strength 0.8 (all 4 steps) with CFG
    s = 8.0 (its defaults), 0.6 unguided (s = 1: 3 of 4 steps), and with an image_reference; the bilinear mask holds
    1/2 at the edges, where the blend alone (not a replaced x_0) is the pipeline's."""
    from PIL import Image
    from diffkit.interop.flux2_inpaint import image_to_image
    from diffkit.latent_editing import latent_mask
    _, path, klein = klein_folder
    pipe = diffusers.Flux2KleinInpaintPipeline.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    folder, mask_path, ref, images, mask = _inpaint_inputs(tmp_path)
    cells = latent_mask(mask, (8, 12), "bilinear")
    assert bool(((cells > 0) & (cells < 1)).any())
    pils = [Image.open(folder / f"{i}.png").convert("RGB") for i in range(2)]
    for call in ({}, {"strength": 0.6, "guidance_scale": 1.0}, {"strength": 0.6, "image_reference": Image.open(ref)}):
        seeds = [torch.Generator().manual_seed(5 + i) for i in range(2)]
        with torch.no_grad():
            theirs = pipe(prompt=PROMPTS, image=pils, mask_image=Image.open(mask_path), num_inference_steps=4,
                          max_sequence_length=LENGTH, generator=seeds, output_type="latent", **call).images
        ours = image_to_image(klein, images, PROMPTS, steps=4, mask=mask, seed=5, max_sequence_length=LENGTH,
                              return_latents=True, **call)
        error = relative_error(klein.vae_latents(ours), theirs)
        print("Flux2KleinInpaintPipeline latents", sorted(call), error)
        assert error < 1e-5  # measured: see docs/interop.md
    pipe.register_to_config(is_distilled=True)
    klein.distilled = True
    try:  # a distilled folder: unguided (the pipeline ignores its default 8.0)
        with torch.no_grad():
            theirs = pipe(prompt=PROMPTS[:1], image=pils[:1], mask_image=Image.open(mask_path), num_inference_steps=2,
                          max_sequence_length=LENGTH, generator=torch.Generator().manual_seed(5),
                          output_type="latent").images
        ours = image_to_image(klein, images[:1], PROMPTS[:1], steps=2, mask=mask, seed=5, max_sequence_length=LENGTH,
                              return_latents=True)
        print("Flux2KleinInpaintPipeline distilled", relative_error(klein.vae_latents(ours), theirs))
        assert relative_error(klein.vae_latents(ours), theirs) < 1e-5
    finally:
        pipe.register_to_config(is_distilled=False)
        klein.distilled = False
    ours = image_to_image(klein, images[:1], PROMPTS[:1], 0.7, mask=mask, sampler="unipc", steps=3,
                          guidance_scale=1.0, max_sequence_length=LENGTH, return_latents=True)
    assert ours.shape == (1, 16, 8, 12) and bool(torch.isfinite(ours).all())
    big = torch.zeros(1, 3, 1024, 1028)
    for pixels, bad, expected in ((images, dict(mask=None), "no FLUX.2 img2img pipeline"),
                                  (images, dict(mask=mask, strength=1.5), "strength"),
                                  (big, dict(mask=big[:, :1]), "shrinks an image above 1048576 pixels")):
        with pytest.raises(DiffkitError, match=expected):
            image_to_image(klein, pixels, PROMPTS[:1], steps=2, **bad)


def test_edit_command_inpaints_klein_folders(klein_folder, flux2_folder, tmp_path, capsys):
    """``diffkit edit --mask`` on a Klein folder: the library's images byte for byte (--strength, --image-reference,
    both in one batch); --padding-mask-crop: the pipeline's PIL output with padding_mask_crop (Flux2ImageProcessor's
    centre-cropping overlay) to the byte; no --mask, a Flux2Pipeline folder, --height, an --image-reference folder:
    one line, no folder."""
    import numpy as np
    from PIL import Image
    from diffkit.images import save_images
    from diffkit.interop.flux2_inpaint import image_to_image
    pipe, path, klein = klein_folder
    folder, mask_path, ref, images, mask = _inpaint_inputs(tmp_path)
    argv = ["edit", "--checkpoint", str(path), "--images", str(folder), "--mask", str(mask_path), "--prompt",
            PROMPTS[0], "--steps", "3", "--seed", "5", "--max-sequence-length", str(LENGTH), "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "out"), "--strength", "0.7", "--image-reference", str(ref),
                        "--batch-size", "2"]) == 0
    save_images(image_to_image(klein, images, PROMPTS[0], 0.7, mask=mask, image_reference=ref, steps=3, seed=5,
                               max_sequence_length=LENGTH, output_range="-1,1"), tmp_path / "expected", prefix="edit")
    for i in range(2):
        name = f"edit_0000{i}.png"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    assert main(argv + ["--out", str(tmp_path / "crop"), "--padding-mask-crop", "2"]) == 0
    inpaint = diffusers.Flux2KleinInpaintPipeline(**pipe.components)
    inpaint.set_progress_bar_config(disable=True)
    for i in range(2):
        with torch.no_grad():
            theirs = inpaint(prompt=PROMPTS[0], image=Image.open(folder / f"{i}.png").convert("RGB"),
                             mask_image=Image.open(mask_path), num_inference_steps=3, max_sequence_length=LENGTH,
                             generator=torch.Generator().manual_seed(5 + i), padding_mask_crop=2).images[0]
        ours = Image.open(tmp_path / "crop" / f"edit_0000{i}.png").convert("RGB")
        assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1
    (tmp_path / "refs").mkdir()
    for checkpoint, extra, expected in (
            (path, ["--mask", None], "needs --mask PNG (white = repaint); diffusers 0.42.1 has no FLUX.2 img2img"),
            (flux2_folder[1], [], "which diffkit edit does not take as a Flux2Pipeline one"),
            (path, ["--height", "32"], "--height does not apply to a FLUX.2 Klein folder"),
            (path, ["--image-reference", str(tmp_path / "refs")], "a FLUX.2 Klein folder takes one PNG")):
        call = [str(checkpoint) if a == str(path) else a for a in argv]
        if extra[:2] == ["--mask", None]:
            call, extra = call[:call.index("--mask")] + call[call.index("--mask") + 2:], []
        capsys.readouterr()
        assert main(call + extra + ["--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()


def test_klein_kv_pipeline_is_diffusers(klein_kv_folder, tmp_path, capsys):
    """Flux2KleinKVPipeline: unguided, 4 steps by default, references before the latents at time 0 attending to
    themselves, extracted at the first call and cached for the later ones (the pipeline's loop): no references, two,
    one with the default steps; ``diffkit sample
    --reference-image`` writes the library's grid; guidance and inpainting: one line."""
    from PIL import Image
    from diffkit.interop.flux2_inpaint import check_inpaint_folder
    from diffkit.interop.flux2 import kv_reference_call
    pipe, path, model = klein_kv_folder
    paths = _reference_pngs(tmp_path)
    refs = [Image.open(p).convert("RGB") for p in paths]
    modes = []
    hook = model.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: modes.append(kwargs.get("kv_cache_mode")), with_kwargs=True)
    for images, steps, size in ((None, 3, {"height": SIZE, "width": SIZE}), (refs, 3, {}), (refs[1:], None, {})):
        with torch.no_grad():
            theirs = pipe(prompt=PROMPTS, image=images, max_sequence_length=LENGTH, output_type="latent",
                          generator=[torch.Generator().manual_seed(5 + i) for i in range(2)],
                          **({} if steps is None else {"num_inference_steps": steps}), **size).images
        ours = model.vae_latents(text_to_image(model, PROMPTS, steps=steps, seed=5, references=images,
                                               max_sequence_length=LENGTH, return_latents=True, **size))
        # 2e-6, not 1e-5: the references attending to all tokens (no KV processors) is 1.4e-5 away on this tiny model
        assert relative_error(ours, theirs) < 2e-6
    hook.remove()
    assert all(d.net._kv_held is None for d in model._denoisers.values())  # released after each call
    assert modes == [None] * 3 + ["extract"] + ["cached"] * 2 + ["extract"] + ["cached"] * 3  # the pipeline's loop
    held = (torch.ones(1, 2, 3), torch.zeros(1, 2, 4), "cache")
    assert kv_reference_call(torch.ones(1, 5, 3), torch.zeros(5, 4), 2 * held[0], held[1], held)[2][
        "kv_cache_mode"] == "extract"  # other references of the same shape: extracted anew
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPTS[0], "--num", "1", "--seed", "5",
                 "--max-sequence-length", str(LENGTH), "--batch-size", "1", "--reference-image", str(paths[1]),
                 "--out", str(out), "--no-progress"]) == 0
    assert "ddim on the pipeline's sigmas" in capsys.readouterr().out
    save_grid(text_to_image(model, PROMPTS[:1], seed=5, references=paths[1:], max_sequence_length=LENGTH,
                            output_range="-1,1"), tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    with pytest.raises(DiffkitError, match="Flux2KleinKVPipeline folder runs unguided"):
        text_to_image(model, PROMPTS, steps=1, guidance_scale=2.0)
    with pytest.raises(DiffkitError, match="is not inpainted"):
        check_inpaint_folder(model)
