"""Bria 3.2 folders (diffkit.interop.bria): text_to_image against diffusers' own BriaPipeline on a tiny random folder
(a tiny T5 encoder of test_interop_sd3's tokenizer, FLUX.1's tiny 16-channel VAE, a tiny BriaTransformer2DModel,
a dynamic-shift or a fixed-shift FlowMatchEuler scheduler; nothing downloaded), with negative prompts and CFG."""
import json
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.bria import is_bria_folder, load_bria, original_sigmas, text_to_image  # noqa: E402
from diffkit.interop.chroma import is_chroma_folder  # noqa: E402
from diffkit.interop.flux import is_flux_folder, pack_latents, unpack_latents  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_flux import tiny_flux_vae, tiny_t5_encoder  # noqa: E402
from test_interop_sd3 import tiny_t5_tokenizer  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SIZE = 16  # images 16 x 16: latents 16 x 8 x 8, 16 packed tokens (the pipeline's vae_scale_factor 4 = 2 f)
LENGTH = 12  # T5 tokens


@pytest.fixture(scope="module")
def tiny_bria(tmp_path_factory):
    """{dynamic: (BriaPipeline.from_pretrained of the saved folder, the folder, load_bria of it)}: one folder with
    FLUX.1-dev's dynamic-shift scheduler, one with a fixed shift 3 (get_original_sigmas' branch)."""
    root = tmp_path_factory.mktemp("bria")
    torch.manual_seed(1)
    t5 = tiny_t5_encoder()
    transformer = diffusers.BriaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=[2, 2, 4])
    out = {}
    for dynamic in (True, False):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=dynamic, base_shift=0.5, max_shift=1.15)
        pipe = diffusers.BriaPipeline(transformer=transformer, scheduler=scheduler, vae=tiny_flux_vae(),
                                      text_encoder=t5, tokenizer=tiny_t5_tokenizer())
        pipe.save_pretrained(root / f"bria_{dynamic}")
        pipe = diffusers.BriaPipeline.from_pretrained(root / f"bria_{dynamic}", local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        out[dynamic] = (pipe, root / f"bria_{dynamic}", load_bria(root / f"bria_{dynamic}", progress=False))
    return out


def _latents(batch=2, seed=7):
    return torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_bria_encodes_prompts_as_the_pipeline(tiny_bria):
    """Each prompt's T5 states (no padding, no mask) then zeros up to max_sequence_length; the folder is Bria's."""
    pipe, folder, bria = tiny_bria[True]
    assert is_bria_folder(folder) and not is_flux_folder(folder) and not is_chroma_folder(folder)
    assert bria.latent_shape(2, SIZE, SIZE) == (2, 16, 8, 8)
    context, mask = bria.encode_prompts(PROMPTS, LENGTH)
    theirs, negative, _ = pipe.encode_prompt(PROMPTS, device="cpu", max_sequence_length=LENGTH)
    assert mask is None and context.shape == (2, LENGTH, 32)
    assert torch.equal(context[1, 3:], torch.zeros(LENGTH - 3, 32))  # "hot dog </s>", then zeros
    torch.testing.assert_close(context, theirs, rtol=0, atol=1e-6)
    assert torch.equal(negative, torch.zeros_like(theirs))  # no negative prompt: zeros
    from diffusers.pipelines.bria.pipeline_bria import get_original_sigmas
    for steps in (1, 3, 30):
        assert original_sigmas(1000, steps).tolist() == get_original_sigmas(1000, steps).tolist()
    assert original_sigmas(1000, 3).tolist() == pytest.approx([1.0, 0.501, 0.001])  # i / T at int(499.5) = 499


@pytest.mark.parametrize("dynamic, kw", [
    (True, {"negative_prompt": "ugly blurry", "guidance_scale": 4.0}),
    (True, {}),  # the default 5.0 against zeros (no negative prompt)
    (False, {"negative_prompt": ["ugly", "blurry the"]}),
    (False, {"guidance_scale": 1.0}),  # no CFG
    (False, {"negative_prompt": ["", "ugly"], "guidance_scale": 3.0})])  # is_ng_none: a first "" zeros every row
def test_bria_matches_the_pipeline(tiny_bria, dynamic, kw):
    """Same z_0 as BriaPipeline from the same latents: flow Euler on its sigmas (linspace shifted with mu of 16
    tokens, or get_original_sigmas shifted by 3), the flow time s T as the timestep, CFG."""
    pipe, _, bria = tiny_bria[dynamic]
    latents = _latents()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3, latents=pack_latents(latents),
                      output_type="latent", max_sequence_length=LENGTH, **kw).images
    theirs = unpack_latents(theirs, 8, 8)
    ours = text_to_image(bria, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                         **kw)
    error = relative_error(ours, theirs)
    print("bria", dynamic, kw, float((ours - theirs).abs().max()), error)
    assert error < 1e-5, (float((ours - theirs).abs().max()), error)


@pytest.mark.parametrize("kw", [{"normalize": True, "clip_value": 0.6, "negative_prompt": "ugly"},
                                {"normalize": True},  # against zeros, the default s = 5
                                {"clip_value": 0.5, "guidance_scale": 1.0}])  # unguided
def test_bria_normalize_and_clip_value_match_the_pipeline(tiny_bria, kw):
    """BriaPipeline's normalize (the guided velocity rescaled to the conditional one's batch std, 0.7 / 0.3) and
    clip_value (the velocity clamped), CFG inside BriaGuidedNet."""
    pipe, _, bria = tiny_bria[True]
    latents = _latents()
    with torch.no_grad():
        theirs = unpack_latents(pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=3, output_type="latent",
                                     latents=pack_latents(latents), max_sequence_length=LENGTH, **kw).images, 8, 8)
    ours = text_to_image(bria, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                         **kw)
    plain = text_to_image(bria, PROMPTS, steps=3, latents=latents, max_sequence_length=LENGTH, return_latents=True,
                          **{k: v for k, v in kw.items() if k not in ("normalize", "clip_value")})
    error = relative_error(ours, theirs)
    print("bria", kw, float((ours - theirs).abs().max()), error, "vs plain", relative_error(plain, theirs))
    assert error < 1e-5 and relative_error(plain, theirs) > 1e-3, (error, relative_error(plain, theirs))


def test_bria_draws_as_the_pipeline_and_decodes(tiny_bria, tmp_path):
    """From seeds: sample i's z from generator seed + i as the pipeline's randn_tensor (unpacked shape); images
    decoded as its VAE step, also for a VAE with shift_factor null (the pipeline's 0)."""
    pipe, folder, bria = tiny_bria[True]
    null = tmp_path / "null_shift"
    for sub in ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer",
                "vae/diffusion_pytorch_model.safetensors"):
        (null / sub).parent.mkdir(parents=True, exist_ok=True)
        (null / sub).symlink_to(folder / sub)
    (null / "vae" / "config.json").write_text(json.dumps({**json.loads((folder / "vae" / "config.json").read_text()),
                                                          "shift_factor": None}))
    for directory in (folder, null):
        theirs_pipe = diffusers.BriaPipeline.from_pretrained(directory, local_files_only=True) \
            if directory == null else pipe
        theirs_pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            theirs = theirs_pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=2, output_type="pt",
                                 max_sequence_length=LENGTH, negative_prompt="ugly",
                                 generator=[torch.Generator().manual_seed(3 + i) for i in range(2)]).images
        model = bria if directory == folder else load_bria(directory, progress=False)
        ours = text_to_image(model, PROMPTS, steps=2, seed=3, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
                             negative_prompt="ugly")
        assert ours.shape == theirs.shape == (2, 3, SIZE, SIZE)
        print("bria images from seeds", directory.name, float((ours - theirs).abs().max()))
        assert float((ours - theirs).abs().max()) < 1e-5
    assert model.shift_factor == 0.0 and bria.shift_factor != 0.0


def test_other_samplers_run_a_bria_folder(tiny_bria):
    """Any diffkit sampler runs the folder on its own grid of the size's flow schedule, close to the pipeline's
    28-step flow Euler run with CFG."""
    pipe, _, bria = tiny_bria[False]
    latents = _latents()
    kw = {"negative_prompt": "ugly", "max_sequence_length": LENGTH}
    with torch.no_grad():
        theirs = unpack_latents(pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=28, output_type="latent",
                                     latents=pack_latents(latents), **kw).images, 8, 8)
    ours = text_to_image(bria, PROMPTS, sampler="unipc", steps=10, latents=latents, return_latents=True, **kw)
    error = relative_error(ours, theirs)
    print("bria unipc", error)
    assert torch.isfinite(ours).all() and error < 0.05, error


def test_sample_command_runs_a_bria_folder(tiny_bria, tmp_path, capsys):
    """`diffkit sample` on a Bria folder writes text_to_image's images byte for byte (--negative-prompt,
    --guidance-scale, --bria-normalize, --bria-clip-value, the pipeline's sigmas and default T5 length 128), within
    one PNG level of BriaPipeline's (normalize's batch std: both prompts in one batch, as the pipeline's)."""
    import numpy as np
    from PIL import Image
    from diffkit.cli import main
    from diffkit.images import save_grid
    pipe, folder, bria = tiny_bria[True]
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--num", "2",
                 "--nrow", "1", "--height", str(SIZE), "--width", str(SIZE), "--out", str(out), "--negative-prompt",
                 "ugly", "--guidance-scale", "4", "--guidance-convention", "diffusers", "--steps", "2", "--seed", "5",
                 "--bria-normalize", "--bria-clip-value", "0.6", "--batch-size", "2", "--no-progress"]) == 0
    kw = {"negative_prompt": "ugly", "guidance_scale": 4.0, "normalize": True, "clip_value": 0.6}
    save_grid(text_to_image(bria, PROMPTS, steps=2, seed=5, height=SIZE, width=SIZE, output_range="-1,1", **kw),
              tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    with torch.no_grad():
        theirs = pipe(PROMPTS, height=SIZE, width=SIZE, num_inference_steps=2, output_type="np",
                      generator=[torch.Generator().manual_seed(5 + i) for i in range(2)], **kw).images
    save_grid(torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1, tmp_path / "theirs.png", 1)
    ours, ref = (np.asarray(Image.open(p), dtype=np.float64) for p in (out, tmp_path / "theirs.png"))
    with capsys.disabled():
        print("bria sample command vs pipeline PNG levels", np.abs(ours - ref).max())
    assert np.abs(ours - ref).max() <= 1
    capsys.readouterr()


def test_what_bria_does_not_take_is_refused_in_one_line(tiny_bria, tmp_path, capsys):
    """The loaders BriaPipeline lacks (--lora, --textual-inversion, --ip-adapter), diffkit edit, FLUX's flags, and
    folders with an image encoder, a patched transformer, another scheduler or Bria FIBO's pipeline: one line each,
    before any output."""
    from diffkit.cli import main
    _, folder, bria = tiny_bria[True]
    base = ["--checkpoint", str(folder), "--prompt", "a cat", "--no-progress"]
    (tmp_path / "in.png").write_bytes(b"")
    (tmp_path / "x.safetensors").write_bytes(b"")
    for command, extra, match in (
            ("sample", ["--lora", str(tmp_path / "x.safetensors")], "--lora does not apply to a Bria folder"),
            ("sample", ["--textual-inversion", str(tmp_path / "x.safetensors")],
             "--textual-inversion does not apply to a Bria folder"),
            ("sample", ["--ip-adapter", str(tmp_path / "x.safetensors"), "--ip-adapter-image",
                        str(tmp_path / "in.png")], "--ip-adapter applies to .* is not one"),
            ("sample", ["--prompt-2", "x"], "--prompt-2 does not apply to a Bria folder"),
            ("sample", ["--true-cfg-scale", "2"], "--true-cfg-scale does not apply to a Bria folder"),
            ("sample", ["--guidance-scale", "0", "--guidance-convention", "diffusers", "--negative-prompt", "x",
                        "--height", "16", "--width", "16"], "the negative prompt feeds only CFG"),
            ("sample", ["--height", "10"], "--height 10 is not allowed"),
            ("sample", ["--bria-clip-value", "0"], "--bria-clip-value=0.0 is out of range; allowed: a finite number in "
                                                   r"\(0.0, inf\)"),
            ("sample", ["--bria-normalize", "--guidance-scale", "1", "--guidance-convention", "diffusers"],
             "normalize=True needs CFG"),
            ("sample", ["--cfg-renorm-min", "0.5"], "--cfg-renorm-min applies to a LongCat-Image folder"),
            ("edit", ["--images", str(tmp_path / "in.png")], "a Bria folder, which diffkit edit does not take")):
        out = tmp_path / ("out.png" if command == "sample" else "out")
        assert main([command] + base + extra + ["--out", str(out)]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(match, err[0]), (extra, err)
        assert not out.exists()
    for kw, match in (({"max_sequence_length": 513}, "max_sequence_length=513 is not allowed"),
                      ({"ip_adapter": object()}, "BriaPipeline .* has no load_ip_adapter"),
                      ({"guidance_scale": float("inf")}, "guidance_scale=inf is not allowed"),
                      ({"normalize": True, "guidance_scale": 1.0}, "normalize=True needs CFG"),
                      ({"clip_value": 0}, "clip_value=0 is not allowed")):
        with pytest.raises(DiffkitError, match=match) as err:
            text_to_image(bria, PROMPTS, steps=1, height=SIZE, width=SIZE, **kw)
        assert "\n" not in str(err.value)
    for name, part, change, match in (
            ("ip", "model_index.json", {"image_encoder": ["transformers", "CLIPVisionModelWithProjection"]},
             "has image_encoder="),
            ("patch", "transformer/config.json", {"patch_size": 2}, "has patch_size=2"),
            ("channels", "transformer/config.json", {"in_channels": 32}, "has in_channels=32"),
            ("ddim", "model_index.json", {"scheduler": ["diffusers", "DDIMScheduler"]},
             "scheduler is a 'DDIMScheduler'"),
            ("fibo", "model_index.json", {"_class_name": "BriaFiboPipeline",
                                          "transformer": ["diffusers", "BriaFiboTransformer2DModel"]},
             "'BriaFiboPipeline' folder, which diffkit does not drive")):
        bad = tmp_path / name
        for sub in ("model_index.json", "vae/config.json", "scheduler/scheduler_config.json",
                    "transformer/config.json"):
            (bad / sub).parent.mkdir(parents=True, exist_ok=True)
            config = json.loads((folder / sub).read_text())
            (bad / sub).write_text(json.dumps({**config, **(change if sub == part else {})}))
        for sub in ("text_encoder", "tokenizer"):
            (bad / sub).symlink_to(folder / sub)
        assert is_bria_folder(bad)
        with pytest.raises(DiffkitError, match=match) as err:
            load_bria(bad, progress=False)
        assert "\n" not in str(err.value)
