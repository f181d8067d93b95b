"""diffusers interop (issue #9 item 5, issue #4 interop): every check compares diffkit with
diffusers' own implementation (schedulers, UNet2DModel, DDIMScheduler, PNDMScheduler,
StableDiffusionPipeline) on tiny randomly initialised models; nothing is downloaded."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import diffkit  # noqa: E402
from diffkit.cli import main as cli_main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import require  # noqa: E402
from diffkit.interop.denoiser import diffusers_denoiser  # noqa: E402
from diffkit.interop.diffusers_unet import (from_diffusers, import_diffusers, to_diffusers,  # noqa: E402
                                            unet2d_config, unet_config_from_diffusers, write_checkpoint)
from diffkit.interop.schedulers import (grid_from_diffusers, schedule_from_diffusers,  # noqa: E402
                                        scheduler_config)
from diffkit.loading import load_denoiser  # noqa: E402
from diffkit.models import UNet, UNetConfig  # noqa: E402
from diffkit.models.layers import timestep_embedding  # noqa: E402
from diffkit.samplers.registry import REGISTRY  # noqa: E402
from diffkit.schedule import NoiseSchedule  # noqa: E402


def randomize(module, seed=0):
    """Random weights everywhere (norm scales around 1), so no zero-initialised layer hides a
    mismatch between the two architectures."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.05
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(noise + (1.0 if is_norm_scale else 0.0))
    return module


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --------------------------------------------------------------------------- schedules
SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="linear", beta_start=2e-4, beta_end=0.03, num_train_timesteps=500),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
]


@pytest.mark.parametrize("kind", ["DDPMScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("config", SCHEDULES)
def test_schedule_matches_diffusers(kind, config):
    theirs = getattr(diffusers, kind)(prediction_type="v_prediction", **config)
    ours, prediction_type = schedule_from_diffusers(theirs)
    assert prediction_type == "v_prediction"
    assert ours.num_timesteps == theirs.config.num_train_timesteps
    b32 = theirs.betas.double()
    if not config.get("rescale_betas_zero_snr"):
        # diffusers builds the same formula in float32 (scaled_linear: a float32 linspace of
        # sqrt(beta), then squared): within a few float32 roundings (4 eps relative) of ours
        ulp = torch.finfo(torch.float32).eps * b32.abs()
        assert ((ours.betas - b32).abs() <= 4 * ulp).all()
    else:  # diffusers rescales in float32; the betas near 1 amplify its rounding
        assert ours.betas[-1] == 1.0 and theirs.betas[-1] == 1.0
    # alpha_bar: diffusers' float32 cumulative product against ours in float64
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=2e-6, atol=1e-6)
    if config["beta_schedule"] == "squaredcos_cap_v2":  # both from Python floats: bit-identical in float32
        assert torch.equal(ours.betas.float(), theirs.betas)


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000), NoiseSchedule.scaled_linear(1000),
                                      NoiseSchedule.cosine(1000), NoiseSchedule.sigmoid(1000),
                                      NoiseSchedule.linear(1000).rescale_zero_terminal_snr()])
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_schedule_to_diffusers_and_back(schedule, kind):
    config = scheduler_config(schedule, "sample", kind=kind)
    cls = getattr(diffusers, config.pop("_class_name"))
    theirs = cls(**config)
    torch.testing.assert_close(theirs.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=2e-6, atol=1e-6)
    back, prediction_type = schedule_from_diffusers(theirs.config)
    assert prediction_type == "sample"
    torch.testing.assert_close(back.betas, schedule.betas, rtol=1e-12, atol=0)  # float64 round trip


def test_bad_scheduler_config_is_one_line():
    with pytest.raises(DiffkitError, match="beta_schedule='exp' is not allowed") as err:
        schedule_from_diffusers({"beta_schedule": "exp"})
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- pixel U-Net
def test_timestep_embedding_matches_diffusers_for_fractional_times():
    from diffusers.models.embeddings import get_timestep_embedding
    t = torch.tensor([0.0, 0.5, 17.25, 998.9])
    theirs = get_timestep_embedding(t, 128, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 128), theirs, rtol=0, atol=1e-6)  # bit-equal here


UNET_CONFIGS = [
    dict(channel=128, channel_mult=[1, 1], attn=[0], num_res_blocks=1, scale_shift_norm=True, num_classes=3),
    dict(channel=128, channel_mult=[1, 1, 2], attn=[1], num_res_blocks=2, learned_variance=True, in_channels=1),
    dict(channel=128, channel_mult=[1, 1, 2], attn=[2], num_res_blocks=1, head_channels=64, resblock_updown=True),
]


@pytest.mark.parametrize("kw", UNET_CONFIGS)
def test_unet_same_function_both_directions(kw):
    cfg = UNetConfig(img_size=8, dropout=0.1, **kw)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3.0, 717.25])  # a fractional time too
    y = torch.tensor([0, 3]) if cfg.num_classes else None  # 3 = diffkit's null class
    with torch.no_grad():
        ours = randomize(UNet(cfg)).eval()
        theirs = to_diffusers(ours).eval()
        a, b = ours(x, t, y=y), theirs(x, t, class_labels=y).sample
        assert relative_error(a, b) < 1e-5
        # diffusers -> diffkit: an independently initialised UNet2DModel of that shape
        theirs2 = randomize(diffusers.UNet2DModel(**unet2d_config(cfg)), seed=2).eval()
        ours2 = from_diffusers(theirs2).eval()
        assert ours2.config.learned_variance == cfg.learned_variance
        assert ours2.config.num_classes == cfg.num_classes
        c, d = ours2(x, t, y=y), theirs2(x, t, class_labels=y).sample
        assert relative_error(c, d) < 1e-5


def test_seed_unet_shape_is_diffusers_benchmark_model():
    seed = UNetConfig(channel=128, channel_mult=[1, 2, 3, 4], attn=[2], num_res_blocks=2, dropout=0.15, img_size=32)
    config = unet2d_config(seed)
    assert config["down_block_types"] == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    assert config["block_out_channels"] == [128, 256, 384, 512] and config["norm_num_groups"] == 32
    assert config["attention_head_dim"] is None and config["layers_per_block"] == 2
    model = diffusers.UNet2DModel(**config)
    assert sum(p.numel() for p in model.parameters()) == 82_958_979
    assert unet_config_from_diffusers(model.config) == seed


@pytest.mark.parametrize("kw, match", [
    (dict(channel=32, channel_mult=[1, 2], attn=[1]), "GroupNorm group counts"),
    (dict(channel=128, channel_mult=[2, 2], attn=[1]), r"channel_mult\[0\]=2"),
    (dict(channel=128, channel_mult=[1, 2], attn=[1], context_dim=16), "cross-attention"),
    (dict(channel=128, channel_mult=[1, 2], attn=[0], num_heads=2), "one attention_head_dim"),
])
def test_unexpressible_configs_are_refused_in_one_line(kw, match):
    with pytest.raises(DiffkitError, match=match) as err:
        unet2d_config(UNetConfig(img_size=8, **kw))
    assert "\n" not in str(err.value)


def test_unexpressible_diffusers_config_is_refused():
    config = dict(diffusers.UNet2DModel(block_out_channels=(128, 128), layers_per_block=1, sample_size=8,
                                        down_block_types=("DownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "UpBlock2D")).config)
    config["flip_sin_to_cos"] = False
    with pytest.raises(DiffkitError, match="flip_sin_to_cos=False"):
        unet_config_from_diffusers(config)


def test_export_import_cli_round_trip(tmp_path, capsys):
    cfg = UNetConfig(channel=128, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8, in_channels=1,
                     dropout=0.1, num_classes=2)
    unet = randomize(UNet(cfg)).eval()
    schedule = NoiseSchedule.cosine(1000)
    write_checkpoint(tmp_path / "a.safetensors", unet, schedule, "v_prediction")
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"),
                     "--to-diffusers", str(tmp_path / "hf")]) == 0
    index = json.loads((tmp_path / "hf" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.double(), schedule.alphas_cumprod, rtol=2e-6, atol=1e-6)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 900.0]), torch.tensor([1, 2])
    with torch.no_grad():
        assert relative_error(pipe.unet(x, t, class_labels=y).sample, unet(x, t, y=y)) < 1e-5
    assert cli_main(["convert", "--from-diffusers", str(tmp_path / "hf"),
                     "--out", str(tmp_path / "b.safetensors")]) == 0
    back = load_denoiser(tmp_path / "b.safetensors")
    assert back.prediction_type == "v_prediction"
    torch.testing.assert_close(back.schedule.betas, schedule.betas, rtol=1e-12, atol=0)
    with torch.no_grad():
        assert torch.equal(back.net(x, t, y=y), unet(x, t, y=y))
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "b.safetensors"), "--steps", "2", "--num", "2",
                     "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    assert (tmp_path / "grid.png").is_file()
    capsys.readouterr()
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors")]) == 2
    assert "--to-diffusers go together" in capsys.readouterr().err


def test_a_bare_unet_folder_reads_its_sibling_scheduler_and_exports_need_an_empty_folder(tmp_path, capsys):
    unet = randomize(UNet(UNetConfig(channel=128, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8,
                                     in_channels=1))).eval()
    schedule = NoiseSchedule.cosine(1000)
    write_checkpoint(tmp_path / "a.safetensors", unet, schedule, "v_prediction")
    hf = tmp_path / "hf"
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers", str(hf)]) == 0
    # hf/unet alone: its scheduler is ../scheduler (it became DDPM linear, epsilon)
    _, back, prediction_type = import_diffusers(hf / "unet")
    assert prediction_type == "v_prediction"
    torch.testing.assert_close(back.betas, schedule.betas, rtol=1e-12, atol=0)
    lone = tmp_path / "lone"
    (hf / "unet").rename(lone)
    with pytest.warns(UserWarning, match="no scheduler config .* assuming DDPM's linear schedule"):
        import_diffusers(lone)
    # an existing, non-empty folder is not written into (a Stable Diffusion folder would be left mixed)
    capsys.readouterr()
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers", str(hf)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    # a pipeline with more than a unet and a scheduler (LDMPipeline: + vqvae) is not a pixel model
    (tmp_path / "ldm").mkdir()
    (tmp_path / "ldm" / "model_index.json").write_text(json.dumps(
        {"_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "vqvae": ["diffusers", "VQModel"],
         "scheduler": ["diffusers", "DDIMScheduler"]}))
    with pytest.raises(DiffkitError, match="is a LDMPipeline with vqvae: not a pixel-space U-Net pipeline"):
        import_diffusers(tmp_path / "ldm")
    # the folder appears whole or not at all: an export that fails half-way (a kill, a full disk)
    # leaves nothing that blocks the rerun; into an empty folder it works and keeps the folder mode
    from diffkit import checkpoint as ckpt_module
    calls = []

    def fails_second(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise DiffkitError("could not write: No space left on device")
        return ckpt_module.atomic_write_bytes(path, data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ckpt_module, "atomic_write_bytes", fails_second)
        assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers",
                         str(tmp_path / "hf2")]) == 2
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir() if "hf2" in p.name) == []
    (tmp_path / "hf2").mkdir()
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers",
                     str(tmp_path / "hf2")]) == 0
    assert (tmp_path / "hf2" / "model_index.json").is_file() and (tmp_path / "hf2").stat().st_mode & 0o055
    # "." (an empty working folder, or a mount point: no rename onto it) and an export killed before
    # its last file (unet/ without model_index.json) are written in place
    (tmp_path / "here").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path / "here")
        assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers", "."]) == 0
    assert (tmp_path / "here" / "model_index.json").is_file()
    (tmp_path / "here" / "model_index.json").unlink()
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"), "--to-diffusers",
                     str(tmp_path / "here")]) == 0
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["model_index.json", "scheduler", "unet"]


def test_import_from_model_object_and_scheduler():
    model = randomize(diffusers.UNet2DModel(block_out_channels=(128, 256), layers_per_block=1, sample_size=8,
                                            in_channels=2, out_channels=4, attention_head_dim=None,
                                            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "AttnUpBlock2D"))).eval()
    sched = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    unet, schedule, prediction_type = import_diffusers(model, sched)
    assert unet.config.learned_variance and unet.config.attn == [0] and prediction_type == "epsilon"
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([40.5])
    with torch.no_grad():
        assert relative_error(unet(x, t), model(x, t).sample) < 1e-5


def test_missing_package_error_names_the_extra():
    with pytest.raises(DiffkitError, match=r"pip install diffkit\[diffusers\]"):
        require("diffkit_no_such_package")


# --------------------------------------------------------------------------- diffusers model as a Denoiser
def small_unet2d(out_channels=1):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels, block_out_channels=(32, 64),
                                 layers_per_block=1, norm_num_groups=8, attention_head_dim=None,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def test_model_dtype_is_diffusers_dtype_and_follows_a_cast():
    """model_dtype (read on every network call) is the model's diffusers .dtype, cached until the parameters'
    dtype or device changes; a module without the property gives the default."""
    from diffkit.interop import model_dtype
    unet = small_unet2d()
    assert model_dtype(unet) == unet.dtype == torch.float32
    unet.to(torch.float64)
    assert model_dtype(unet) == torch.float64 == unet.dtype
    assert model_dtype(torch.nn.Linear(2, 2), torch.bfloat16) == torch.bfloat16


def test_every_sampler_runs_a_diffusers_unet():
    """Every registered sampler on a random UNet2DModel: finite, and deterministic given the noise
    and the seed (two rows with the same x_T and identically seeded generators end equal)."""
    denoiser = diffusers_denoiser(small_unet2d(), diffusers.DDPMScheduler())
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)).expand(2, 1, 8, 8).contiguous()
    for name in REGISTRY:
        if REGISTRY[name].adaptive:  # ode takes no steps (tests/test_samplers_ode.py)
            continue
        generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
        out = diffkit.sample(denoiser, noise.clone(), name, steps=2, generator=generators, progress=False)
        assert torch.isfinite(out).all(), name
        assert torch.equal(out[0], out[1]), name


@pytest.mark.parametrize("prediction_type, set_alpha_to_one, steps_offset, T, steps",
                         [("epsilon", True, 0, 1000, 6), ("v_prediction", False, 1, 1000, 6),
                          ("epsilon", True, 1, 10, 9)])  # stride 1: the last step goes to t = 0, not clean data
def test_ddim_equals_diffusers_ddim_scheduler(prediction_type, set_alpha_to_one, steps_offset, T, steps):
    model = small_unet2d()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, prediction_type=prediction_type, num_train_timesteps=T,
                                        set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset)
    scheduler.set_timesteps(steps)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
    denoiser = diffusers_denoiser(model, scheduler)
    grid = grid_from_diffusers(scheduler)
    last = int(scheduler.timesteps[-1]) - T // steps
    assert grid[-1] == (last if last >= 0 else -1.0 if set_alpha_to_one else 0.0)
    ours = diffkit.sample(denoiser, noise.clone(), "ddim", grid=grid, progress=False)
    assert denoiser.nfe == steps
    assert relative_error(ours, x) < 1e-5


# --------------------------------------------------------------------------- Stable Diffusion
def _bytes_to_unicode():
    """GPT-2 / CLIP byte -> printable character table (Radford et al. 2019 BPE)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip_tokenizer(root):
    """A CLIPTokenizer of the 256 byte characters (and a few merges), model_max_length 16, its files written into
    ``root`` (the tiny SD folders' and Stable Cascade's)."""
    transformers = pytest.importorskip("transformers")
    chars = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    merges = ["#version: 0.2", "p h", "o t", "o</w> t"]
    for m in ("ph", "ot", "o</w>t"):
        vocab.setdefault(m, len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("\n".join(merges) + "\n")
    return transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16)


def tiny_sd_components(root, **unet_options):
    """(unet, vae, text_encoder, tokenizer) of a tiny random Stable Diffusion (seeded, so equal
    calls give equal weights); ``unet_options`` go to UNet2DConditionModel (e.g.
    ``time_cond_proj_dim`` for an LCM, ``in_channels=9`` for an inpainting UNet, ``layers_per_block=2`` for
    ControlNet-XS). The tokenizer's files
    are written into ``root``."""
    transformers = pytest.importorskip("transformers")
    tokenizer = tiny_clip_tokenizer(root)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        **{"in_channels": 4, "out_channels": 4, "layers_per_block": 1, **unet_options})
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=8, sample_size=16)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=16))
    return unet, vae, text_encoder, tokenizer


def sd_ddim_scheduler():
    """Stable Diffusion v1's DDIM scheduler (scaled-linear betas 0.00085..0.012, steps_offset 1)."""
    return diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_sd_pipeline(root):
    """:func:`tiny_sd_components` in a StableDiffusionPipeline with :func:`sd_ddim_scheduler` (no bar)."""
    unet, vae, text_encoder, tokenizer = tiny_sd_components(root)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             scheduler=sd_ddim_scheduler(), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny random Stable Diffusion folder written by diffusers' save_pretrained, and the pipeline."""
    root = tmp_path_factory.mktemp("tiny_sd")
    pipe = tiny_sd_pipeline(root)
    pipe.save_pretrained(root / "sd")
    from diffkit.interop.stable_diffusion import is_stable_diffusion_folder, load_stable_diffusion
    assert is_stable_diffusion_folder(root / "sd") and not is_stable_diffusion_folder(root)
    return pipe, load_stable_diffusion(root / "sd")


def test_sd_folder_without_components_is_refused(tmp_path):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(DiffkitError, match="lacks the Stable Diffusion component"):
        load_stable_diffusion(tmp_path)


def test_sd_loads_shapes_and_prompts(tiny_sd):
    pipe, sd = tiny_sd
    assert sd.vae_scale_factor == 2 and sd.scaling_factor == pipe.vae.config.scaling_factor
    assert sd.latent_shape(3) == (3, 4, 8, 8)
    assert sd.schedule.num_timesteps == 1000 and sd.prediction_type == "epsilon"
    ours = sd.encode_prompts(["a photo", ""])
    theirs, negative = pipe.encode_prompt("a photo", "cpu", 1, True, negative_prompt=None)
    torch.testing.assert_close(ours[:1], theirs)
    torch.testing.assert_close(ours[1:], negative)


def _pipeline_and_ours(tiny_sd, scheduler, ours_fn, steps=4, scale=5.0, output_type="pt", **pipe_options):
    """diffusers' StableDiffusionPipeline and ``ours_fn`` on the same prompts, latents z_T and
    guidance scale; ``output_type`` "pt" (images in [0, 1]) or "latent" (z_0)."""
    from diffkit.interop.stable_diffusion import text_to_image
    pipe, sd = tiny_sd
    prompts = ["a photo of a cat", "hot"]
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    pipe.scheduler = scheduler
    with torch.no_grad():
        theirs = pipe(prompts, num_inference_steps=steps, guidance_scale=scale, latents=latents.clone(), eta=0.0,
                      output_type=output_type, **pipe_options).images
    ours = ours_fn(sd, prompts, latents, steps, scale, text_to_image, output_type == "latent")
    return ours, theirs


def test_sd_ddim_matches_stable_diffusion_pipeline(tiny_sd):
    scheduler = diffusers.DDIMScheduler.from_config(tiny_sd[0].scheduler.config)

    def ours_fn(sd, prompts, latents, steps, scale, t2i, return_latents):
        return t2i(sd, prompts, sampler="ddim", steps=steps, grid="scheduler", guidance_scale=scale, latents=latents,
                   eta=0.0, return_latents=return_latents)

    z_ours, z_theirs = _pipeline_and_ours(tiny_sd, scheduler, ours_fn, output_type="latent")
    assert relative_error(z_ours, z_theirs) < 1e-5
    ours, theirs = _pipeline_and_ours(tiny_sd, scheduler, ours_fn)
    assert ours.shape == theirs.shape == (2, 3, 16, 16)
    assert 0 <= ours.min() and ours.max() <= 1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_sd_guidance_rescale_and_nfe_match_the_pipeline(tiny_sd):
    """``guidance_rescale`` as StableDiffusionPipeline applies it (on the network's output); and
    ``nfe=`` alone spends that many calls (the default steps no longer collide with it)."""
    scheduler = diffusers.DDIMScheduler.from_config(tiny_sd[0].scheduler.config)

    def ours_fn(sd, prompts, latents, steps, scale, t2i, return_latents):
        return t2i(sd, prompts, sampler="ddim", steps=steps, grid="scheduler", guidance_scale=scale, latents=latents,
                   eta=0.0, guidance_rescale=0.7, return_latents=return_latents)

    z_ours, z_theirs = _pipeline_and_ours(tiny_sd, scheduler, ours_fn, output_type="latent", guidance_rescale=0.7)
    assert relative_error(z_ours, z_theirs) < 1e-5
    plain, _ = _pipeline_and_ours(tiny_sd, scheduler, lambda sd, p, z, n, s, t2i, r: t2i(
        sd, p, sampler="ddim", steps=n, grid="scheduler", guidance_scale=s, latents=z, return_latents=True),
        output_type="latent")
    assert relative_error(plain, z_theirs) > 1e-3  # the rescale changes the result
    from diffkit.interop.stable_diffusion import text_to_image
    _, sd = tiny_sd
    sd.denoiser.reset_nfe()
    text_to_image(sd, ["hot"], sampler="heun", nfe=5, return_latents=True)
    assert sd.denoiser.nfe == 5


def test_sd_guidance_rescale_of_a_v_prediction_folder_works_on_v(tiny_sd, tmp_path):
    """A v-prediction folder (SD 2.x): the pipeline's ``rescale_noise_cfg`` rescales the UNet's own
    output, v, and so does ``StableDiffusion.guided`` by default (text_to_image and diffkit edit)."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    pipe, _ = tiny_sd
    eps_scheduler = pipe.scheduler  # the module's pipeline gets its scheduler back: later tests read its config
    scheduler = diffusers.DDIMScheduler.from_config(eps_scheduler.config, prediction_type="v_prediction")
    try:
        pipe.scheduler = scheduler
        pipe.save_pretrained(tmp_path / "sd_v")
    finally:
        pipe.scheduler = eps_scheduler
    sd_v = load_stable_diffusion(tmp_path / "sd_v")
    assert sd_v.prediction_type == "v_prediction"

    def ours_fn(sd, prompts, latents, steps, scale, t2i, return_latents):
        return t2i(sd, prompts, sampler="ddim", steps=steps, grid="scheduler", guidance_scale=scale, latents=latents,
                   eta=0.0, guidance_rescale=0.7, return_latents=return_latents)

    try:
        z_ours, z_theirs = _pipeline_and_ours((pipe, sd_v), scheduler, ours_fn, output_type="latent",
                                              guidance_rescale=0.7)
    finally:
        pipe.scheduler = eps_scheduler
    assert relative_error(z_ours, z_theirs) < 1e-5


def test_sd_pndm_skip_prk_matches_improved_euler_then_plms(tiny_sd):
    """diffusers' PNDMScheduler(skip_prk_steps=True) = pseudo improved Euler on the first step, then
    PLMS of orders 2, 3, 4 with e_1 = eps(x_T, T) in the history (PNDM eq. 13 / Sec. 3.3): the
    registered 'pndm-skip-prk' ('s-pndm' stops at order 2 and 'plms' warms up with a first-order
    step instead; see docs/interop.md)."""
    from diffkit.samplers.registry import get_sampler
    scheduler = diffusers.PNDMScheduler.from_config(tiny_sd[0].scheduler.config, skip_prk_steps=True)

    def ours_fn(sd, prompts, latents, steps, scale, t2i, return_latents):
        scheduler.set_timesteps(steps)
        grid = grid_from_diffusers(scheduler)
        context, null = sd.encode_prompts(prompts), sd.encode_prompts([""] * len(prompts))
        return get_sampler("pndm-skip-prk").fn(sd.guided(scale, null), latents.clone(), grid,
                                               cond=sd.cond(context), callback=None, progress=False)

    z_ours, z_theirs = _pipeline_and_ours(tiny_sd, scheduler, ours_fn, steps=6, output_type="latent")
    assert relative_error(z_ours, z_theirs) < 1e-5


def test_sd_every_sampler_finite(tiny_sd):
    from diffkit.interop.stable_diffusion import text_to_image
    _, sd = tiny_sd
    for name in ("dpm-solver++-2m", "euler-ancestral", "unipc", "heun"):
        images = text_to_image(sd, ["a photo"], sampler=name, steps=3, guidance_scale=4.0, seed=1,
                               output_range="-1,1")
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all(), name
        assert images.min() >= -1 and images.max() <= 1


def test_sample_command_runs_a_stable_diffusion_folder(tiny_sd, tmp_path, capsys):
    """`diffkit sample --checkpoint SD_FOLDER --prompt ...` writes the grid of text_to_image's
    images: one row per prompt, sample i from seed + i, guidance w (seed convention)."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop.stable_diffusion import text_to_image
    pipe, sd = tiny_sd
    pipe.save_pretrained(tmp_path / "sd")
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "a photo", "--prompt", "hot",
                 "--num", "4", "--nrow", "2", "--steps", "3", "--guidance-scale", "2", "--seed", "5",
                 "--batch-size", "3", "--out", str(out), "--no-progress"]) == 0
    images = torch.cat([text_to_image(sd, ["a photo", "a photo", "hot"], steps=3, guidance_scale=2.0,
                                      convention="seed", seed=5, output_range="-1,1"),
                        text_to_image(sd, ["hot"], steps=3, guidance_scale=2.0, convention="seed", seed=8,
                                      output_range="-1,1")])
    save_grid(images, tmp_path / "expected.png", 2)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    from diffkit.commands.sample import GuidanceRequest, sample_stable_diffusion
    auto = sample_stable_diffusion(tmp_path / "sd", num=4, nrow=2, steps=3, seed=5, out=tmp_path / "auto.png",
                                   guidance=GuidanceRequest(guidance_scale=2.0, prompts=["a photo", "hot"]),
                                   progress=False)  # batch_size="auto": one batch of 4, probed first
    torch.testing.assert_close(auto, images, atol=1e-5, rtol=0)
    capsys.readouterr()  # drop save_pretrained's progress bars
    assert main(["sample", "--checkpoint", str(tmp_path / "sd"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompt" in err[0]
    assert main(["sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "hot", "--noise-out",
                 str(tmp_path / "n.png"), "--out", str(tmp_path / "x.png")]) == 2  # it was ignored
    assert "--noise-out" in capsys.readouterr().err and not (tmp_path / "n.png").exists()
    # --guidance-rescale: the pipeline's guidance_rescale (was refused for Stable Diffusion folders); and
    # --negative-prompt: text_to_image's negative_prompt (the pipeline's: test_sd_textual_inversion.py)
    assert main(["sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "hot", "--num", "2", "--steps", "3",
                 "--guidance-scale", "2", "--guidance-rescale", "0.7", "--negative-prompt", "ugly", "--seed", "5",
                 "--out", str(out), "--no-progress"]) == 0
    save_grid(text_to_image(sd, ["hot", "hot"], steps=3, guidance_scale=2.0, convention="seed", guidance_rescale=0.7,
                            negative_prompt="ugly", seed=5, output_range="-1,1"), tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_a_folder_with_pickled_weights_or_bad_json_is_refused_in_one_line(tmp_path, capsys):
    """Imports read .safetensors weights only (a .bin is a pickle, never loaded), and a config that
    is not a JSON object is one line, not a traceback."""
    small_unet2d().save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "diffusion_pytorch_model.bin").is_file()
    for folder, text in (("pickled", None), ("listcfg", "[1]"), ("badcfg", "{bad")):
        if text is not None:
            (tmp_path / folder).mkdir()
            (tmp_path / folder / "config.json").write_text(text)
        code = cli_main(["convert", "--from-diffusers", str(tmp_path / folder),
                         "--out", str(tmp_path / "x.safetensors")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_grid_from_a_scheduler_before_set_timesteps_is_one_line():
    for scheduler in (diffusers.DDIMScheduler(), diffusers.PNDMScheduler()):
        with pytest.raises(DiffkitError, match="call scheduler.set_timesteps"):
            grid_from_diffusers(scheduler)


def _diffusers_loop(model, scheduler, x):
    for t in scheduler.timesteps:
        with torch.no_grad():
            out = model(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("scheduler, sampler", [
    (lambda: diffusers.PNDMScheduler(steps_offset=1), "pndm"),  # PRK warm-up: its base grid, not its half steps
    (lambda: diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min"), "dpm-solver++-2m"),
    (lambda: diffusers.DPMSolverMultistepScheduler(final_sigmas_type="zero"), "dpm-solver++-2m"),
])
def test_grids_from_schedulers_reproduce_their_loops(scheduler, sampler):
    """The grid of grid_from_diffusers and the same method in diffkit give diffusers' own loop:
    the last step of final_sigmas_type='sigma_min' ends at t = 0 (it went to clean data)."""
    model, scheduler = small_unet2d(), scheduler()
    scheduler.set_timesteps(6)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = _diffusers_loop(model, scheduler, x.clone())
    grid = grid_from_diffusers(scheduler)
    ours = diffkit.sample(diffusers_denoiser(model, scheduler), x.clone(), sampler, grid=grid, progress=False)
    assert relative_error(ours, theirs) < 1e-5  # the other final target is 7e-5 away here


def test_schedulers_without_betas_and_kdpm2_grids_are_refused():
    with pytest.raises(DiffkitError, match="has no beta schedule"):
        schedule_from_diffusers(diffusers.EDMEulerScheduler())
    with pytest.raises(DiffkitError, match="num_train_timesteps=1.5"):
        schedule_from_diffusers({"beta_schedule": "linear", "num_train_timesteps": 1.5})
    kdpm2 = diffusers.KDPM2DiscreteScheduler()
    kdpm2.set_timesteps(4)
    with pytest.raises(DiffkitError, match="interleave its midpoint"):
        grid_from_diffusers(kdpm2)
    trailing = diffusers.DDIMScheduler(timestep_spacing="trailing")
    trailing.set_timesteps(6)  # 6 does not divide 1000: DDIM steps by 166 between times 166-167 apart
    with pytest.raises(DiffkitError, match="use a step count that divides num_train_timesteps=1000"):
        grid_from_diffusers(trailing)


def test_sd_xl_inpainting_and_bad_sizes_are_refused_in_one_line(tiny_sd, tmp_path):
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    pipe, sd = tiny_sd
    pipe.save_pretrained(tmp_path / "sd")
    config_file = tmp_path / "sd" / "unet" / "config.json"
    original = json.loads(config_file.read_text())
    for change, match in (({"addition_embed_type": "text_time"}, "addition_embed_type='text_time'"),
                          ({"in_channels": 6}, "in_channels=6 and out_channels=4"),
                          ({"in_channels": 5}, r"depth-to-image UNet \(in_channels=5.*use diffkit edit"),  # sd_depth
                          ({"in_channels": 9}, r"inpainting UNet \(in_channels=9.*it only inpaints")):  # sd_inpaint
        config_file.write_text(json.dumps({**original, **change}))
        with pytest.raises(DiffkitError, match=match):
            load_stable_diffusion(tmp_path / "sd")
    with pytest.raises(DiffkitError, match="height=0"):
        text_to_image(sd, "hot", steps=2, height=0)
    with pytest.raises(DiffkitError, match=r"latents of shape \(1, 3, 8, 8\) are not allowed; expected \(1, 4, h, w\)"):
        text_to_image(sd, "hot", steps=2, latents=torch.randn(1, 3, 8, 8))


def test_scheduler_variance_types():
    model = small_unet2d(out_channels=2)
    with pytest.raises(DiffkitError, match="variance_type='learned' .* is not diffkit's learned variance"):
        diffusers_denoiser(model, diffusers.DDPMScheduler(variance_type="learned"))
    assert diffusers_denoiser(model, diffusers.DDPMScheduler(variance_type="learned_range")).learned_variance
    with pytest.warns(UserWarning, match="variance_type='fixed_large' is a sampling choice"):
        convertible = diffusers.UNet2DModel(block_out_channels=(128, 256), layers_per_block=1, sample_size=8,
                                            in_channels=1, out_channels=1, attention_head_dim=None,
                                            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "AttnUpBlock2D"))
        unet = import_diffusers(convertible, diffusers.DDPMScheduler(variance_type="fixed_large"))[0]
        assert not unet.config.learned_variance


def test_a_failed_diffusers_load_is_one_line_and_a_good_one_keeps_the_librarys_warnings(tmp_path, capfd):
    """A folder holding only fp16-variant weights: diffusers logs its own error line before raising;
    diffkit's one line is all that shows. Warnings of a load that succeeds still show."""
    import logging

    from diffkit.interop import _library_logs_held

    small_unet2d().save_pretrained(tmp_path / "unet", variant="fp16")
    (tmp_path / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    capfd.readouterr()
    assert cli_main(["convert", "--from-diffusers", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no file named diffusion_pytorch_model.safetensors" in err, err
    assert not (tmp_path / "x.safetensors").exists()

    shown = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        with _library_logs_held():
            logging.getLogger("diffusers.models.modeling_utils").warning("a library warning")
            assert shown == []
        with pytest.raises(DiffkitError), _library_logs_held():
            logging.getLogger("diffusers.models.modeling_utils").error("a failed load's line")
            raise DiffkitError("the load failed")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert shown == ["a library warning"]


@pytest.mark.parametrize("spacing, steps", [("trailing", 48), ("trailing", 96), ("trailing", 112), ("linspace", 26),
                                            ("linspace", 27), ("trailing", 7), ("linspace", 50)])
def test_trailing_and_linspace_round_as_diffusers_does(spacing, steps):
    """The spacings that round (trailing: DDIM/PNDM/Euler's; linspace: DPMSolver/UniPC's) give
    diffusers' timesteps exactly, ties included (torch's arange rounded some the other way:
    trailing at 48 steps gave 937 for diffusers' 936; linspace at 26 gave 500 for 499)."""
    from diffkit.timesteps import make_grid
    scheduler = (diffusers.DDIMScheduler if spacing == "trailing" else diffusers.DPMSolverMultistepScheduler)(
        timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    ours = make_grid(NoiseSchedule.linear(1000), steps, spacing, "zero")[:-1]
    assert ours.long().tolist() == scheduler.timesteps.tolist()[:steps]


def test_no_progress_hides_the_libraries_loading_bars_and_restores_their_setting(tiny_sd, tmp_path, capfd):
    """`diffkit sample --checkpoint SD_FOLDER --no-progress` showed transformers' "Loading weights"
    bar while loading the folder; now the libraries' bars follow --no-progress for the load and
    their own setting is back afterwards."""
    import transformers
    from diffkit.cli import main
    pipe, _ = tiny_sd
    pipe.save_pretrained(tmp_path / "sd")
    argv = ["sample", "--checkpoint", str(tmp_path / "sd"), "--prompt", "a photo", "--num", "1", "--steps", "1",
            "--batch-size", "1", "--out", str(tmp_path / "grid.png")]
    capfd.readouterr()
    assert main([*argv, "--no-progress"]) == 0
    assert "it/s" not in capfd.readouterr().err  # no tqdm bar of any library
    assert transformers.utils.logging.is_progress_bar_enabled() and diffusers.utils.logging.is_progress_bar_enabled()
    assert main(argv) == 0  # with progress on, the bars (the libraries' and ours) show as before
    assert "it/s" in capfd.readouterr().err
    transformers.utils.logging.disable_progress_bar()  # a user's own choice survives a load with progress on
    try:
        from diffkit.interop.stable_diffusion import load_stable_diffusion
        load_stable_diffusion(tmp_path / "sd", progress=True)
        assert not transformers.utils.logging.is_progress_bar_enabled()
    finally:
        transformers.utils.logging.enable_progress_bar()


@pytest.mark.parametrize("option", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_deis_with_a_repeated_last_sigma_is_refused_with_deis_advice(option):
    """With these options DEISMultistepScheduler repeats its last sigma (a zero-length last step):
    the refusal names the option and diffkit's own Karras grid, not a final_sigmas_type DEIS lacks."""
    from diffusers import DEISMultistepScheduler
    scheduler = DEISMultistepScheduler(**{option: True})
    scheduler.set_timesteps(10)
    with pytest.raises(DiffkitError, match="repeats its last sigma.*spacing='karras'") as err:
        grid_from_diffusers(scheduler)
    assert "final_sigmas_type" not in str(err.value)


# --------------------------------------------------------------------------- consistency models -> LCMScheduler
def _consistency_checkpoint(path, prediction_type="epsilon", learned_variance=False, **entry):
    """A random pixel U-Net saved as a consistency model (the metadata ``diffkit distill`` writes)."""
    from diffkit.consistency import distillation_grid
    cfg = UNetConfig(channel=128, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8, in_channels=1,
                     learned_variance=learned_variance)
    consistency = {"objective": "consistency-distillation", "teacher": "teacher.safetensors", "sigma_data": 0.5,
                   "timestep_scaling": 10.0, "grid": [int(t) for t in distillation_grid(1000).tolist()],
                   "distance": "pseudo-huber", "guidance": None, **entry}
    return write_checkpoint(path, randomize(UNet(cfg), seed=4).eval(), NoiseSchedule.linear(1000), prediction_type,
                            consistency=consistency)


def _lcm_loop(unet, scheduler, x, steps, seed):
    scheduler.set_timesteps(steps)
    gens = diffkit.noise.generators_from_seed(seed, x.shape[0])
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=gens, return_dict=False)[0]
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_consistency_model_exports_as_an_lcm_scheduler_pipeline_and_imports_back(tmp_path, prediction_type):
    """LCMScheduler stepping the exported UNet2DModel is diffkit's ``consistency`` sampler on the
    checkpoint (same x_T, same per-sample step noise) at 1 and 4 steps; --from-diffusers restores
    the consistency entry from the LCMScheduler config."""
    ckpt = _consistency_checkpoint(tmp_path / "cm.safetensors", prediction_type)
    assert cli_main(["convert", "--checkpoint", str(ckpt), "--to-diffusers", str(tmp_path / "hf")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    assert isinstance(pipe.scheduler, diffusers.LCMScheduler)
    assert pipe.scheduler.config.original_inference_steps == 50 and pipe.scheduler.config.timestep_scaling == 10.0
    assert pipe.scheduler.config.prediction_type == prediction_type
    den = load_denoiser(ckpt)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for steps in (1, 4):
        theirs = _lcm_loop(pipe.unet, pipe.scheduler, x_T.clone(), steps, seed=7)
        ours = diffkit.sample(den, x_T.clone(), "consistency", steps=steps,
                              generator=diffkit.noise.generators_from_seed(7, 3), progress=False)
        assert relative_error(ours, theirs) < 1e-5, (steps, relative_error(ours, theirs))
    assert cli_main(["convert", "--from-diffusers", str(tmp_path / "hf"),
                     "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_denoiser(tmp_path / "back.safetensors")
    entry = back.meta["consistency"]
    assert ((entry["sigma_data"], entry["timestep_scaling"], entry["grid"])
            == (0.5, 10.0, den.meta["consistency"]["grid"]))
    for steps in (1, 4):
        torch.testing.assert_close(
            diffkit.sample(back, x_T.clone(), "consistency", steps=steps, seed=1, progress=False),
            diffkit.sample(den, x_T.clone(), "consistency", steps=steps, seed=1, progress=False))


def test_lcm_original_inference_steps_is_the_grids_n():
    """diffkit's grid for skip k (t_0 = 0, t_n = n k - 1) is LCMScheduler's for N = T // k where
    T // N == k; other grids are refused."""
    from diffkit.consistency import distillation_grid
    from diffkit.interop.diffusers_unet import consistency_from_lcm, lcm_original_steps
    for T, k in ((1000, 20), (1000, 1), (1000, 100), (1000, 30), (100, 2), (1000, 500)):
        grid = distillation_grid(T, k)
        n = lcm_original_steps(grid, T)
        ref = diffusers.LCMScheduler(num_train_timesteps=T, original_inference_steps=n)
        ref.set_timesteps(n)
        assert sorted({0, *ref.timesteps.tolist()}) == grid.tolist(), (T, k)
        assert consistency_from_lcm({"original_inference_steps": n}, T)["grid"] == grid.tolist()
    with pytest.raises(DiffkitError, match=r"grid \(0, 299, 599, 899; 4 times, T=1000\) is not") as err:
        lcm_original_steps(distillation_grid(1000, 300), 1000)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,match", [
    ({"sigma_data": 0.25}, r"sigma_data=0\.25 cannot be expressed by diffusers' LCMScheduler .*sigma_data=0\.5"),
    ({"learned_variance": True}, "learned_variance=True cannot be expressed by diffusers' LCMScheduler"),
    ({"grid": [0, 299, 599, 899]}, r"consistency grid \(0, 299, 599, 899"),
])
def test_consistency_models_lcm_scheduler_cannot_express_are_refused(tmp_path, capsys, kw, match):
    lv = kw.pop("learned_variance", False)
    ckpt = _consistency_checkpoint(tmp_path / "cm.safetensors", learned_variance=lv, **kw)
    assert cli_main(["convert", "--checkpoint", str(ckpt), "--to-diffusers", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(match, err), err
    assert not (tmp_path / "hf").exists()


def test_a_distilled_checkpoint_with_another_sigma_data_is_refused(tmp_path):
    """The checkpoint ``diffkit distill``'s Trainer writes (not a hand-made entry)."""
    from diffkit.interop.diffusers_unet import export_diffusers
    from test_gradient_noise import make_consistency_checkpoint
    ckpt = make_consistency_checkpoint(tmp_path, consistency_sigma_data=0.25)
    with pytest.raises(DiffkitError, match=r"sigma_data=0\.25 cannot be expressed"):
        export_diffusers(ckpt, tmp_path / "hf")


def test_a_consistency_model_with_another_skip_exports_its_grids_n(tmp_path):
    """skip k = 100 (N = 10): LCMScheduler picks its steps from those 10 training times, and so does
    the consistency sampler's default grid on the loaded model (its skip read from its grid): the
    same loop."""
    from diffkit.consistency import distillation_grid
    from diffkit.interop.diffusers_unet import export_diffusers
    ckpt = _consistency_checkpoint(tmp_path / "cm.safetensors", grid=[int(t) for t in distillation_grid(1000, 100)],
                                   timestep_scaling=4.0)
    pipe = diffusers.DDPMPipeline.from_pretrained(export_diffusers(ckpt, tmp_path / "hf"))
    assert pipe.scheduler.config.original_inference_steps == 10 and pipe.scheduler.config.timestep_scaling == 4.0
    den = load_denoiser(ckpt)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    theirs = _lcm_loop(pipe.unet, pipe.scheduler, x_T.clone(), 4, seed=5)
    assert pipe.scheduler.timesteps.tolist() == [999, 799, 499, 299]
    assert den.consistency_times.tolist() == [100.0 * n - 1 for n in range(1, 11)]
    ours = diffkit.sample(den, x_T.clone(), "consistency", steps=4, generator=diffkit.noise.generators_from_seed(5, 2),
                          progress=False)
    assert relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("n", [300, 1, 7, 1000])
def test_an_imported_lcm_scheduler_samples_on_its_own_timesteps(n):
    """--from-diffusers of any original_inference_steps N (also T // (T // N) != N, e.g. 300: times
    2, 5, ..., 899): the consistency sampler's default grid on the imported model is
    LCMScheduler's timesteps (a review found N = 300 sampling at 998 and N = 1 failing to load)."""
    from diffkit.consistency import ConsistencyDenoiser
    from diffkit.interop.diffusers_unet import consistency_from_lcm
    from diffkit.sampling import sampler_grid
    entry = consistency_from_lcm({"original_inference_steps": n, "timestep_scaling": 10.0}, 1000)
    cm = ConsistencyDenoiser(diffkit.Denoiser(lambda x, t: 0 * x, NoiseSchedule.linear(1000)), grid=entry["grid"])
    for steps in sorted({1, min(4, n)}):
        ref = diffusers.LCMScheduler(num_train_timesteps=1000, original_inference_steps=n)
        ref.set_timesteps(steps)
        assert sampler_grid(cm, REGISTRY["consistency"], steps=steps)[:-1].tolist() == ref.timesteps.tolist(), steps


@pytest.mark.parametrize("power,inv_gamma,decay", [(2 / 3, 1.0, 0.9999), (0.75, 3.0, 0.5)])
def test_ema_power_warmup_equals_diffusers_ema_model(power, inv_gamma, decay):
    """diffkit's EMA with ema_power / ema_inv_gamma against diffusers' EMAModel(use_ema_warmup=True):
    the same decay at every update and the same averaged weights (its first update copies them);
    ema_warmup against EMAModel without use_ema_warmup: the same decays from the second update on."""
    from diffusers.training_utils import EMAModel

    from diffkit.training import EMA
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4).double()
    ours = EMA(model, decay, power=power, inv_gamma=inv_gamma)
    theirs = EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, inv_gamma=inv_gamma, power=power)
    warm, warm_theirs = EMA(model, decay, warmup=True), EMAModel(model.parameters(), decay=decay)
    for n in range(15):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = ours.current_decay()
        d_warm = warm.current_decay()
        for ema in (ours, warm):
            ema.update(model)
        for ema in (theirs, warm_theirs):
            ema.step(model.parameters())
        assert d == pytest.approx(theirs.cur_decay_value, rel=1e-14, abs=1e-15), n
        if n > 0:
            assert d_warm == pytest.approx(warm_theirs.cur_decay_value, rel=1e-14), n
        for a, b in zip(ours.params, theirs.shadow_params):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- flow matching
def _flow_checkpoint(path, shift, T=1000, seed=3):
    """A random class-free flow-matching U-Net written as a diffkit checkpoint (NoiseSchedule.flow)."""
    cfg = UNetConfig(channel=128, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8, in_channels=1)
    unet = randomize(UNet(cfg), seed=seed).eval()
    write_checkpoint(path, unet, NoiseSchedule.flow(T, shift=shift), "flow_prediction", flow_shift=shift)
    return unet


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_flow_checkpoint_exports_as_flow_match_euler_and_its_loop_is_diffkit_ddim(tmp_path, shift):
    """The exported folder's FlowMatchEulerDiscreteScheduler has diffkit's flow sigmas, its
    UNet2DModel gives diffkit's velocity at float flow times s * T (diffusers' timesteps sigma * T),
    and diffusers' Euler loop on it is diffkit's DDIM on the VP times of its sigmas (equal SNR)."""
    from test_flow_matching import T, ddim_states
    unet = _flow_checkpoint(tmp_path / "flow.safetensors", shift)
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "flow.safetensors"),
                     "--to-diffusers", str(tmp_path / "hf")]) == 0
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path / "hf")
    scheduler = pipe.scheduler
    assert isinstance(scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    assert (scheduler.config.num_train_timesteps, scheduler.config.shift) == (T, shift)
    assert not scheduler.config.use_dynamic_shifting
    s = diffkit.diffusion.flow_time(NoiseSchedule.flow(T, shift).alpha(torch.arange(T, dtype=torch.float64)),
                                    NoiseSchedule.flow(T, shift).sigma(torch.arange(T, dtype=torch.float64)))
    # before set_timesteps: T sigmas
    torch.testing.assert_close(scheduler.sigmas.double().flip(0), s, rtol=1e-6, atol=1e-7)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    times = torch.tensor([1000.0, 612.37, 3.5]) * (T / 1000)  # float flow times s * T
    with torch.no_grad():
        assert relative_error(pipe.unet(x, times).sample, unet(x, times)) < 1e-5
    scheduler.set_timesteps(5)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    xt = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            xt = scheduler.step(pipe.unet(xt, t).sample, t, xt, return_dict=False)[0]
        net = lambda x, t: unet(x.float(), t.float()).double()  # noqa: E731
        ours = ddim_states(NoiseSchedule.flow(T, shift=shift), net, noise.double(),
                           [float(v) for v in scheduler.sigmas])[-1]
    assert relative_error(ours.float(), xt) < 1e-5, relative_error(ours.float(), xt)  # measured ~1.3e-6
    # DDPMPipeline runs the same loop with this scheduler (from its own torch.randn of the generator)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(6), num_inference_steps=5,
                  output_type="np").images
    want = (xt / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - want).max() < 1e-6


def test_a_flow_folder_imports_back_to_the_same_checkpoint(tmp_path):
    """--to-diffusers then --from-diffusers: bitwise the same weights, the flow schedule, and
    prediction_type / schedule / flow_shift in the metadata."""
    from diffkit.checkpoint import load_checkpoint
    _flow_checkpoint(tmp_path / "a.safetensors", 2.5, T=200)
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"),
                     "--to-diffusers", str(tmp_path / "hf")]) == 0
    assert cli_main(["convert", "--from-diffusers", str(tmp_path / "hf"),
                     "--out", str(tmp_path / "b.safetensors")]) == 0
    (a, meta_a), (b, meta_b) = (load_checkpoint(tmp_path / f"{n}.safetensors") for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("prediction_type", "schedule", "flow_shift", "unet"):
        assert meta_b[key] == meta_a[key], key
    assert (meta_b["prediction_type"], meta_b["schedule"], meta_b["flow_shift"]) == ("flow_prediction", "flow", 2.5)
    assert load_denoiser(tmp_path / "b.safetensors").prediction_type == "flow_prediction"
    unet2d = diffusers.UNet2DModel.from_pretrained(tmp_path / "hf" / "unet")  # objects in memory: a scheduler
    made = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=200, shift=2.5)  # whose config has no class
    _, schedule, prediction_type = import_diffusers(unet2d, made)
    assert prediction_type == "flow_prediction" and torch.equal(schedule.betas, NoiseSchedule.flow(200, 2.5).betas)


def test_a_trained_flow_checkpoints_shift_comes_from_its_config():
    from diffkit.interop.diffusers_unet import flow_shift_of
    assert flow_shift_of({"config": {"flow_shift": 3.0}}) == 3.0
    assert flow_shift_of({"flow_shift": 2.0, "config": {}}) == 2.0
    assert flow_shift_of({}) == 1.0


@pytest.mark.parametrize("key, value, match", [
    ("use_dynamic_shifting", True, "use_dynamic_shifting=True cannot be expressed"),
    ("invert_sigmas", True, "invert_sigmas=True cannot be expressed"),
    ("shift", 0.0, "shift=0.0 is not allowed"),
    ("shift", "3", "shift='3' is not allowed"),
])
def test_a_flow_folder_diffkit_cannot_express_is_one_line(tmp_path, capsys, key, value, match):
    _flow_checkpoint(tmp_path / "a.safetensors", 1.0, T=100)
    assert cli_main(["convert", "--checkpoint", str(tmp_path / "a.safetensors"),
                     "--to-diffusers", str(tmp_path / "hf")]) == 0
    path = tmp_path / "hf" / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, key: value}))
    capsys.readouterr()
    out = str(tmp_path / "b.safetensors")
    assert cli_main(["convert", "--from-diffusers", str(tmp_path / "hf"), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.safetensors").exists()


def test_flow_sampling_options_warn_and_a_foreign_schedule_is_refused():
    from diffkit.errors import DiffkitWarning
    from diffkit.interop.schedulers import flow_scheduler_config
    with pytest.warns(DiffkitWarning, match="use_karras_sigmas=True"):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_karras_sigmas=True)
        sch, pred = schedule_from_diffusers(scheduler)
    assert pred == "flow_prediction" and torch.equal(sch.betas, NoiseSchedule.flow(1000, 3.0).betas)
    with pytest.raises(DiffkitError, match="not the flow schedule of T=1000, flow_shift=2.0"):
        flow_scheduler_config(NoiseSchedule.flow(1000, 3.0), 2.0)
    with pytest.raises(DiffkitError, match="flow-matching model .* use flow_scheduler_config"):
        scheduler_config(NoiseSchedule.flow(1000), "flow_prediction")
