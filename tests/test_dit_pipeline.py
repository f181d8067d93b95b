"""diffkit DiT checkpoints <-> diffusers DiTPipeline folders (diffkit.interop.dit_pipeline; docs/interop.md):
the exported transformer computes what diffkit's DiT computes, export then import is bitwise the same network,
DiTPipeline and diffkit sample a folder (pixel-space, or latent with a tiny random AutoencoderKL as
facebook/DiT-XL-2-256's) to the same images from the same noise, DDIM and DPM-Solver, guidance 1 and 4; and the
one-line refusals. Tiny random models, nothing downloaded."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import diffkit  # noqa: E402
from diffkit import checkpoint as ckpt  # noqa: E402
from diffkit.errors import DiffkitError, DiffkitWarning  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance  # noqa: E402
from diffkit.interop.dit_pipeline import dit_description, pixel_decoder  # noqa: E402
from diffkit.interop.schedulers import grid_from_diffusers  # noqa: E402
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.models.dit import DiT, DiTConfig  # noqa: E402
from diffkit.schedule import NoiseSchedule  # noqa: E402
from test_cli_errors import one_line_error  # noqa: E402
from test_dit_diffusers import TINY, randomize  # noqa: E402

SCHEDULERS = {"ddim": diffusers.DDIMScheduler, "dpm-solver++-2m": diffusers.DPMSolverMultistepScheduler}


def dit_checkpoint(path, num_classes=1000, learned_variance=True, seed=0, schedule=None):
    """A training-style checkpoint of a tiny random DiT: raw weights under model., other (EMA) weights under ema."""
    net = randomize(DiT(DiTConfig(**TINY, num_classes=num_classes, learned_variance=learned_variance)), seed).eval()
    raw = randomize(DiT(net.config), seed + 1)
    schedule = schedule or NoiseSchedule.linear(1000, 1e-4, 0.02)
    tensors = {**{f"model.{k}": v for k, v in raw.state_dict().items()},
               **{f"ema.{k}": v for k, v in net.state_dict().items()}, "schedule.betas": schedule.betas}
    meta = {"unet": dit_description(net), "prediction_type": "epsilon", "learned_variance": learned_variance,
            "step": 7}
    ckpt.save_checkpoint(path, tensors, meta)
    return net, raw


def test_export_writes_a_dit_pipeline_whose_transformer_computes_what_diffkit_does(tmp_path, capsys):
    """diffkit convert --to-diffusers of a DiT checkpoint: transformer/ (its EMA weights by default), scheduler/
    (DDIMScheduler with the exact schedule), model_index.json (vae null); DiTTransformer2DModel loaded from the
    folder gives diffkit's output, the null label 1000 included (0 difference measured on the CPU)."""
    from diffkit.cli import main
    net, raw = dit_checkpoint(tmp_path / "dit.safetensors")
    assert main(["convert", "--checkpoint", str(tmp_path / "dit.safetensors"), "--to-diffusers",
                 str(tmp_path / "hf")]) == 0
    assert "DiTPipeline.from_pretrained(" in capsys.readouterr().out
    index = json.loads((tmp_path / "hf" / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["vae"] == [None, None]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    theirs = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "hf" / "transformer").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "hf" / "scheduler")
    c = scheduler.config
    assert (c.beta_schedule, c.beta_start, c.beta_end, c.num_train_timesteps, c.clip_sample) == (
        "linear", 1e-4, 0.02, 1000, False)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([0, 411, 999]), torch.tensor([5, 999, 1000])
    with torch.no_grad():
        ours, expected = net(x, t, y), theirs(x, t, class_labels=y).sample
    assert (ours - expected).abs().max() <= 1e-6 * expected.abs().max()
    with torch.no_grad():  # the EMA weights, not the raw ones
        assert (raw(x, t, y) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("num_classes, learned_variance", [(1000, True), (None, False)])
def test_export_then_import_is_bitwise_the_same_network(tmp_path, num_classes, learned_variance, recwarn):
    """export_diffusers then import_diffusers(out=...): the same DiTConfig (an unconditional DiT comes back
    unconditional), bitwise the same weights and schedule; diffkit sample reads the folder itself too."""
    from diffkit.interop import export_diffusers, import_diffusers
    schedule = NoiseSchedule.cosine(200)
    net, _ = dit_checkpoint(tmp_path / "dit.safetensors", num_classes, learned_variance, schedule=schedule)
    export_diffusers(tmp_path / "dit.safetensors", tmp_path / "hf")
    back, back_schedule, prediction_type = import_diffusers(tmp_path / "hf", out=tmp_path / "back.safetensors")
    assert back.config == net.config and prediction_type == "epsilon"
    for name, d in (("import", back), ("checkpoint", load_denoiser(tmp_path / "back.safetensors").model),
                    ("folder", load_denoiser(tmp_path / "hf").model)):
        state = d.state_dict()
        assert state.keys() == net.state_dict().keys()
        for key, value in net.state_dict().items():
            assert torch.equal(state[key], value), (name, key)
    torch.testing.assert_close(back_schedule.betas, schedule.betas, rtol=1e-12, atol=0)
    assert load_denoiser(tmp_path / "back.safetensors").meta["unet"] == dit_description(net)


def _tiny_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                   up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8],
                                   latent_channels=3, norm_num_groups=4, layers_per_block=1,
                                   sample_size=16, scaling_factor=0.5).eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A pixel-space export (vae null) and a latent DiTPipeline folder (the same transformer over a tiny random
    AutoencoderKL's 8x8x3 latents, DDIMScheduler, as facebook/DiT-XL-2-256 lays it out)."""
    root = tmp_path_factory.mktemp("dit_pipeline")
    from diffkit.interop import export_diffusers
    dit_checkpoint(root / "dit.safetensors")
    export_diffusers(root / "dit.safetensors", root / "pixel")
    pipe = diffusers.DiTPipeline.from_pretrained(root / "pixel", vae=_tiny_vae())
    pipe.save_pretrained(root / "latent")
    return root / "pixel", root / "latent"


def _diffkit_sample(folder, scheduler, noise, labels, scale):
    """diffkit on the folder: classifier-free guidance in diffusers' convention (s) on the scheduler's grid,
    decoded by the folder's VAE (or not, for a pixel DiT) to DiTPipeline's (x / 2 + 0.5).clamp(0, 1).
    (the sampled z / scaling_factor, the images)."""
    d = load_denoiser(folder)
    guided = ClassifierFreeGuidance(d, scale, "diffusers") if scale > 1 else d
    name = "ddim" if isinstance(scheduler, diffusers.DDIMScheduler) else "dpm-solver++-2m"
    z = diffkit.sample(guided, noise.clone(), name, grid=grid_from_diffusers(scheduler), cond={"y": labels},
                       progress=False)
    if d.decoder is None:
        return z, (z / 2 + 0.5).clamp(0, 1)
    return z / d.decoder.scale_factor, (d.decoder(z) / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++-2m"])
@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize("kind", ["latent", "pixel"])
def test_dit_pipeline_and_diffkit_sample_a_folder_alike(folders, kind, sampler, scale):
    """DiTPipeline (guidance on the first in_channels output channels, null label 1000, learned variance
    dropped) and diffkit's ClassifierFreeGuidance on the same folder, same x_T, 4 steps: the same latents handed
    to the VAE (relative 1e-5 asserted; 8e-8 measured) and images (1e-5 asserted; 4e-7 measured). The pixel
    export runs in DiTPipeline with vae=pixel_decoder()."""
    folder = folders[0] if kind == "pixel" else folders[1]
    pipe = diffusers.DiTPipeline.from_pretrained(folder, **({"vae": pixel_decoder()} if kind == "pixel" else {}))
    pipe.scheduler = SCHEDULERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    seen, decode = [], pipe.vae.decode
    pipe.vae.decode = lambda z, **kw: seen.append(z.clone()) or decode(z, **kw)
    labels = [3, 999]
    theirs = pipe(class_labels=labels, guidance_scale=scale, num_inference_steps=4, output_type="pt",
                  generator=torch.Generator().manual_seed(5)).images
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    pipe.scheduler.set_timesteps(4)
    z, ours = _diffkit_sample(folder, pipe.scheduler, noise, torch.tensor(labels), scale)
    assert (z - seen[0]).abs().max() <= 1e-5 * seen[0].abs().max()
    # images: 1e-5 (the pixel DiT's x_0 of size ~100 at the clamp's edge: 1e-5 of that / 2)
    assert (ours - theirs).abs().max() <= 1e-5 * (1 if kind == "latent" else seen[0].abs().max() / 2)


def test_diffkit_sample_runs_a_latent_dit_folder_with_class_guidance(folders, tmp_path, capsys):
    from diffkit.cli import main
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(folders[1]), "--class", "3", "--guidance-scale", "4",
                 "--guidance-convention", "diffusers", "--steps", "2", "--num", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    assert out.is_file()


def test_refusals_are_one_line(folders, tmp_path, capsys):
    """A latent DiT folder cannot become a diffkit checkpoint; a vae that is no AutoencoderKL, a transformer
    with an exact GELU (DiT's MLP has the tanh one), a latent diffkit DiT export: one
    line each, nothing written. A DiT whose null label is not 1000 exports with a warning."""
    from diffkit.interop.dit_pipeline import dit_pipeline_files, load_dit_folder
    line = one_line_error(capsys, "convert", "--from-diffusers", str(folders[1]), "--out",
                          str(tmp_path / "o" / "x.safetensors"))
    assert "is a latent DiT (vae: AutoencoderKL), which a diffkit checkpoint cannot hold" in line
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad"
    diffusers.DiTPipeline.from_pretrained(folders[0], vae=_tiny_vae()).save_pretrained(bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "VQModel"]}))
    with pytest.raises(DiffkitError, match=r"vae is a 'VQModel'; allowed: AutoencoderKL .* or null"):
        load_dit_folder(bad)
    gelu = tmp_path / "gelu"
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=3, num_layers=1,
                                    sample_size=8, num_embeds_ada_norm=4, activation_fn="gelu").save_pretrained(gelu)
    with pytest.warns(DiffkitWarning, match="no scheduler config"), \
            pytest.raises(DiffkitError, match=r"activation_fn='gelu'; diffkit's DiT has 'gelu-approximate'"):
        load_dit_folder(gelu)
    net = DiT(DiTConfig(**TINY, num_classes=10))
    meta = {"unet": dit_description(net), "prediction_type": "epsilon"}
    with pytest.raises(DiffkitError, match="is a latent DiT: diffusers' DiTPipeline decodes with an AutoencoderKL"):
        dit_pipeline_files("ldit.safetensors", net, {**meta, "latent": {"scale_factor": 1.0}},
                           NoiseSchedule.linear(10, 1e-4, 0.02))
    with pytest.warns(DiffkitWarning, match="num_classes=10 .* DiTPipeline passes 1000 as the null label"):
        dit_pipeline_files("dit.safetensors", net, meta, NoiseSchedule.linear(10, 1e-4, 0.02))


def test_a_dit_xl_2_style_folder_loads_with_diffusers_layer_norm_eps(tmp_path):
    """facebook/DiT-XL-2-256's layout: model_index.json naming a Transformer2DModel, its config.json without
    norm_eps (so diffusers runs its MLP LayerNorms at its default 1e-5, not DiT's 1e-6) and with
    Transformer2DModel's other keys, a vae and a DDIMScheduler: diffkit's DiT (norm_eps 1e-5) computes what
    diffusers' model does, and one with 1e-6 measurably does not."""
    from diffkit.interop.dit import to_diffusers
    theirs = to_diffusers(randomize(DiT(DiTConfig(**TINY, num_classes=1000, learned_variance=True, norm_eps=1e-5))))
    pipe = diffusers.DiTPipeline(transformer=theirs.eval(), vae=_tiny_vae(), scheduler=diffusers.DDIMScheduler())
    pipe.save_pretrained(tmp_path / "xl")
    config_file = tmp_path / "xl" / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    del config["norm_eps"]
    config.update(_class_name="Transformer2DModel", cross_attention_dim=None, num_vector_embeds=None,
                  use_linear_projection=False, only_cross_attention=False)
    config_file.write_text(json.dumps(config))
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    (tmp_path / "xl" / "model_index.json").write_text(json.dumps(index))
    d = load_denoiser(tmp_path / "xl")
    assert d.model.config.norm_eps == 1e-5 and d.meta["unet"]["norm_eps"] == 1e-5 and d.decoder is not None
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([3, 800]), torch.tensor([1000, 42])
    with torch.no_grad():
        expected = theirs(x, t, class_labels=y).sample
        assert (d.model(x, t, y) - expected).abs().max() <= 1e-6 * expected.abs().max()  # 0 measured
        eps6 = DiT(DiTConfig(**TINY, num_classes=1000, learned_variance=True))  # DiT's 1e-6: 4.8e-6 away
        eps6.load_state_dict(d.model.state_dict())
        assert (eps6(x, t, y) - expected).abs().max() > 1e-6 * expected.abs().max()


def test_a_flow_dit_exports_with_flow_match_euler_and_imports_back(tmp_path):
    """A flow-matching DiT: a FlowMatchEulerDiscreteScheduler (shift 2.5) in the folder, and back the same weights,
    flow schedule, prediction type and shift (the U-Net's flow export, tests/test_interop_diffusers.py)."""
    from diffkit.interop import export_diffusers, import_diffusers
    schedule = NoiseSchedule.flow(200, 2.5)
    net, _ = dit_checkpoint(tmp_path / "flow.safetensors", None, False, schedule=schedule)
    tensors, meta = ckpt.load_checkpoint(tmp_path / "flow.safetensors")
    ckpt.save_checkpoint(tmp_path / "flow.safetensors", tensors,
                         {**meta, "prediction_type": "flow_prediction", "schedule": "flow", "flow_shift": 2.5})
    export_diffusers(tmp_path / "flow.safetensors", tmp_path / "hf")
    scheduler = json.loads((tmp_path / "hf" / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["shift"]) == ("FlowMatchEulerDiscreteScheduler", 2.5)
    back, back_schedule, prediction_type = import_diffusers(tmp_path / "hf", out=tmp_path / "b.safetensors")
    assert prediction_type == "flow_prediction" and torch.equal(back_schedule.betas, schedule.betas)
    _, meta_b = ckpt.load_checkpoint(tmp_path / "b.safetensors")
    assert (meta_b["schedule"], meta_b["flow_shift"], meta_b["unet"]) == ("flow", 2.5, dit_description(net))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in net.state_dict().items())
