"""FreeU (Si et al., CVPR 2024; diffkit.models.freeu) against diffusers 0.42's own implementation: the tensor
operations against ``apply_freeu`` / ``fourier_filter``, a diffkit U-Net against its converted ``UNet2DModel``
whose ``UpBlock2D`` blocks run diffusers' FreeU code, a U-Net with attention in the FreeU stages against hooks
that call ``apply_freeu`` on its decoder's inputs, and a Stable Diffusion folder against
``StableDiffusionPipeline.enable_freeu``. Tiny random models; nothing is downloaded."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.utils.torch_utils import apply_freeu, fourier_filter as diffusers_fourier_filter  # noqa: E402

from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.models import UNet, UNetConfig  # noqa: E402
from diffkit.models.freeu import (SD15_FREEU, FreeU, fourier_filter, freeu_enabled, freeu_of,  # noqa: E402
                                  parse_freeu, scale_backbone)
from test_interop_diffusers import randomize, relative_error  # noqa: E402

FREEU = FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2)  # diffusers' values for SD 1.5
KW = dict(s1=FREEU.s1, s2=FREEU.s2, b1=FREEU.b1, b2=FREEU.b2)


@pytest.mark.parametrize("shape, dtype", [((2, 6, 4, 4), torch.float32), ((1, 5, 7, 7), torch.float32),
                                          ((2, 4, 6, 8), torch.float32), ((2, 8, 8, 8), torch.bfloat16)])
def test_tensor_operations_equal_diffusers_bit_for_bit(shape, dtype):
    g = torch.Generator().manual_seed(0)
    h, skip = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    for scale in (0.2, 0.9, 1.0, 1.7):
        ours, theirs = fourier_filter(skip, threshold=1, scale=scale), diffusers_fourier_filter(skip, 1, scale)
        assert ours.dtype == theirs.dtype == dtype and torch.equal(ours, theirs)
    assert torch.equal(fourier_filter(skip, threshold=2, scale=0.5), diffusers_fourier_filter(skip, 2, 0.5))
    for stage in (0, 1, 2, 3):  # diffusers' resolution_idx; 2 and above: unchanged
        ours = FREEU.apply(stage, h, skip)
        theirs = apply_freeu(stage, h.clone(), skip, **KW)  # diffusers scales h in place
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    before = h.clone()
    assert torch.equal(scale_backbone(h, 1.5)[:, shape[1] // 2:], h[:, shape[1] // 2:])
    assert torch.equal(h, before)  # not in place


def test_the_skip_filter_scales_only_the_low_frequency_window():
    """The closed form: a constant map is all zero frequency, so it is scaled by s; a checkerboard is all
    Nyquist frequency (outside the window for H, W >= 4), so it passes unchanged."""
    const = torch.full((1, 1, 8, 8), 3.0)
    torch.testing.assert_close(fourier_filter(const, 1, 0.2), 0.2 * const, atol=1e-6, rtol=0)
    i = torch.arange(8)
    checker = ((-1.0) ** (i[:, None] + i[None, :])).reshape(1, 1, 8, 8)
    torch.testing.assert_close(fourier_filter(checker, 1, 0.2), checker, atol=1e-6, rtol=0)


def _unet(seed=0, **kw):
    return randomize(UNet(UNetConfig(img_size=8, **kw)), seed).eval()


def _inputs(cfg, batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, cfg.in_channels, 8, 8, generator=g), torch.tensor([3.0, 717.25])[:batch]


def test_unet_with_freeu_equals_a_converted_unet2dmodel_running_diffusers_freeu():
    """No attention in the two lowest levels: the converted UNet2DModel's up_blocks[0] and [1] are UpBlock2D,
    whose forward applies diffusers' FreeU before each resnet's concatenation once a resolution_idx and the
    factors are set; UNet2DModel sets neither (only UNet2DConditionModel has enable_freeu), so they are set by
    hand as UNet2DConditionModel.__init__ and enable_freeu set them. Three levels, two resnets per level: every
    concatenation of stages 1 and 2 is FreeU's, the third stage's none."""
    from diffkit.interop.diffusers_unet import to_diffusers
    ours = _unet(channel=128, channel_mult=[1, 1, 1], attn=[0], num_res_blocks=1, num_classes=3)
    theirs = to_diffusers(ours).eval()
    assert [type(b).__name__ for b in theirs.up_blocks] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]
    x, t = _inputs(ours.config)
    y = torch.tensor([0, 3])
    with torch.no_grad():
        off = ours(x, t, y=y)
        for i, block in enumerate(theirs.up_blocks):
            block.resolution_idx = i
            for name, value in KW.items():
                setattr(block, name, value)
        reference = theirs(x, t, class_labels=y).sample
        with freeu_enabled(ours, FREEU):
            on = ours(x, t, y=y)
        assert torch.equal(ours(x, t, y=y), off)  # off again on exit, bit for bit
    assert relative_error(on, reference) < 1e-5
    assert relative_error(off, reference) > 1e-2  # FreeU changed the output


def _hooked_reference(unet: UNet, freeu: FreeU):
    """Forward pre-hooks on diffkit's up chains that split each chain's input [h, skip] and apply diffusers'
    ``apply_freeu`` with resolution_idx = the decoder stage counted from the lowest resolution (the levels'
    chains in order, num_res_blocks + 1 each); h's width from the config alone (the middle's, then the level
    of the chain before)."""
    cfg = unet.config
    widths, per_level = cfg.level_channels(), cfg.num_res_blocks + 1
    levels = len(widths)
    handles = []
    for i, chain in enumerate(unet.up):
        width = widths[-1] if i == 0 else widths[levels - 1 - (i - 1) // per_level]

        def hook(module, args, stage=i // per_level, width=width):
            x, *rest = args
            h, skip = apply_freeu(stage, x[:, :width].clone(), x[:, width:], s1=freeu.s1, s2=freeu.s2,
                                  b1=freeu.b1, b2=freeu.b2)
            return (torch.cat([h, skip], dim=1), *rest)
        handles.append(chain.register_forward_pre_hook(hook))
    return handles


@pytest.mark.parametrize("kw", [dict(channel=32, channel_mult=[1, 2, 2], attn=[1, 2], num_res_blocks=1),
                                dict(channel=32, channel_mult=[1, 2], attn=[1], num_res_blocks=2, context_dim=16,
                                     resblock_updown=True)])
def test_unet_with_attention_in_the_freeu_stages_equals_diffusers_apply_freeu_by_hooks(kw):
    """Attention (and cross-attention, resblock up-sampling) in the FreeU stages, which UNet2DModel's
    AttnUpBlock2D would run without FreeU: the reference is diffkit's own U-Net with diffusers' apply_freeu
    hooked onto its decoder chains' inputs."""
    ours = _unet(**kw)
    x, t = _inputs(ours.config)
    context = torch.randn(2, 3, 16) if kw.get("context_dim") else None
    with torch.no_grad():
        off = ours(x, t, context=context)
        with freeu_enabled(ours, FREEU):
            on = ours(x, t, context=context)
        handles = _hooked_reference(ours, FREEU)
        try:
            reference = ours(x, t, context=context)
        finally:
            for handle in handles:
                handle.remove()
    assert torch.equal(on, reference)
    assert not torch.allclose(on, off, atol=1e-3)


def test_off_is_bit_identical_and_unit_factors_change_only_round_off():
    ours = _unet(channel=32, channel_mult=[1, 2, 2], attn=[1], num_res_blocks=1)
    x, t = _inputs(ours.config)
    with torch.no_grad():
        off = ours(x, t)
        with freeu_enabled(ours, None):
            assert freeu_of(ours) is None and torch.equal(ours(x, t), off)
        with freeu_enabled(ours, "1,1,1,1"):
            assert freeu_of(ours) == FreeU(1, 1, 1, 1)
            assert 0 < relative_error(ours(x, t), off) < 1e-5  # FFT round-off alone
        with pytest.raises(RuntimeError, match="boom"):
            with freeu_enabled(ours, FREEU):
                raise RuntimeError("boom")
        assert "freeu" not in ours.__dict__ and torch.equal(ours(x, t), off)


def test_off_is_the_forward_before_freeu_bit_for_bit():
    """FreeU off: the U-Net's output equals its forward as written before the FreeU hook (the decoder loop
    without it), rebuilt here from the U-Net's own blocks."""
    import torch.nn.functional as F

    from diffkit.models.layers import run_blocks, to_caller_layout, to_compute_layout
    from diffkit.models.unet import broadcast_time
    unet = _unet(channel=32, channel_mult=[1, 2, 2], attn=[1], num_res_blocks=2, num_classes=3)
    x, t = _inputs(unet.config)
    y = torch.tensor([1, 3])
    with torch.no_grad():
        emb = F.silu(unet.embedding(broadcast_time(t, 2, x.device), y, 2))
        skips = [unet.input_conv(to_compute_layout(x, unet.memory_format))]
        skips += run_blocks(unet.down, skips[0], emb, None)
        h = unet.middle(skips[-1], emb, None)
        for block in unet.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, None)
        before = to_caller_layout(unet.out_conv(unet.out_norm.forward_silu(h)), x)
        assert torch.equal(unet(x, t, y=y), before)


def test_freeu_reaches_the_unet_under_a_denoiser_and_is_refused_for_other_networks():
    from diffkit.denoiser import Denoiser
    from diffkit.models.dit import DiT, DiTConfig
    from diffkit.schedule import NoiseSchedule
    unet = _unet(channel=32, channel_mult=[1, 2], attn=[], num_res_blocks=1)
    denoiser = Denoiser(unet, NoiseSchedule.linear(100))
    with freeu_enabled(denoiser, FREEU):
        assert freeu_of(unet) == FREEU and freeu_of(denoiser) == FREEU
    assert freeu_of(unet) is None
    dit = DiT(DiTConfig(img_size=8, in_channels=1, patch_size=2, num_layers=1, num_attention_heads=2,
                        attention_head_dim=16))
    with pytest.raises(DiffkitError, match="not one") as err:
        with freeu_enabled(dit, FREEU):
            pass
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, match", [("1.5,1.6,0.9", "four positive"), ("1.5,x,0.9,0.2", "b2='x'"),
                                         ("1.5,1.6,0,0.2", "s1=0.0"), ("-1,1,1,1", "b1=-1.0"),
                                         ("1,1,1,inf", "s2=inf"), ("1,1,1,nan", "s2=nan"), ("", "four"),
                                         (1.5, "FreeU 1.5 is not allowed; give four"),
                                         (None, "FreeU None is not allowed"), ((1, 1, 1), "FreeU \\(1, 1, 1\\)")])
def test_bad_factors_are_one_line_errors(text, match):
    with pytest.raises(DiffkitError, match=match) as err:
        parse_freeu(text)
    assert "\n" not in str(err.value)


def test_parse_order_is_b1_b2_s1_s2():
    assert parse_freeu(" 1.5, 1.6 ,0.9,0.2") == SD15_FREEU == FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    assert SD15_FREEU.as_list() == [1.5, 1.6, 0.9, 0.2]


# ----------------------------------------------------------------------------- Stable Diffusion
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    from test_interop_diffusers import tiny_sd_pipeline
    root = tmp_path_factory.mktemp("tiny_sd_freeu")
    pipe = tiny_sd_pipeline(root)
    pipe.save_pretrained(root / "sd")
    return root / "sd", load_stable_diffusion(root / "sd", progress=False)


def test_stable_diffusion_with_freeu_equals_the_pipelines_enable_freeu(tiny_sd):
    """text_to_image(freeu=...) against StableDiffusionPipeline with enable_freeu (a fresh pipeline from the
    same folder), DDIM on the scheduler's timesteps; FreeU is disabled again after."""
    from diffkit.interop.stable_diffusion import text_to_image
    folder, sd = tiny_sd
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a cat", "hot"]
    latents = torch.randn(sd.latent_shape(2), generator=torch.Generator().manual_seed(7))
    pipe.enable_freeu(**KW)
    with torch.no_grad():
        theirs = pipe(prompts, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(), eta=0.0,
                      output_type="latent").images
    pipe.disable_freeu()
    with torch.no_grad():
        plain = pipe(prompts, num_inference_steps=4, guidance_scale=5.0, latents=latents.clone(), eta=0.0,
                     output_type="latent").images
    ours = text_to_image(sd, prompts, sampler="ddim", steps=4, grid="scheduler", guidance_scale=5.0,
                         latents=latents, eta=0.0, return_latents=True, freeu="1.5,1.6,0.9,0.2")
    assert relative_error(ours, theirs) < 1e-5
    assert relative_error(plain, theirs) > 1e-3  # FreeU changed the latents
    assert all(getattr(block, "b1", None) is None for block in sd.unet.up_blocks)  # disabled again
    again = text_to_image(sd, prompts, sampler="ddim", steps=4, grid="scheduler", guidance_scale=5.0,
                          latents=latents, eta=0.0, return_latents=True)
    assert relative_error(again, plain) < 1e-5
    with pytest.raises(DiffkitError, match="FreeU"):
        text_to_image(sd, prompts, steps=1, freeu="1,1,1")


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_guidance import write_model_checkpoint
    return write_model_checkpoint(tmp_path_factory.mktemp("freeu_ck") / "uncond.safetensors", None)


def test_sample_freeu_writes_the_grid_of_the_unet_with_freeu(checkpoint, tmp_path, capsys):
    """`diffkit sample --freeu B1,B2,S1,S2` equals the library's sampling inside freeu_enabled (and without the
    flag the library's plain sampling: the reference is built the same way)."""
    from diffkit.images import save_grid
    from diffkit.loading import load_denoiser
    from diffkit.sampling import sample
    from test_guidance import run_cli
    denoiser = load_denoiser(checkpoint, device="cpu")
    grids = []
    for flag, freeu in (([], None), (["--freeu", "1.5,1.6,0.9,0.2"], FREEU)):
        code, out = run_cli(capsys, "sample", "--checkpoint", checkpoint, "--steps", 3, "--num", 4, "--out",
                            tmp_path / "grid.png", "--no-progress", "--device", "cpu", *flag)
        assert code == 0, out.err
        assert ("FreeU b,s=1.5,1.6,0.9,0.2" in out.out) == bool(flag)
        with freeu_enabled(denoiser, freeu), torch.no_grad():
            noise = torch.cat([torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)])
            images = sample(denoiser, noise, "ddim", 3, seed=0, progress=False)
        save_grid(images.clamp(-1, 1), tmp_path / "expected.png", 4)
        assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes(), flag
        grids.append((tmp_path / "grid.png").read_bytes())
    assert grids[0] != grids[1]


def test_sample_freeu_on_a_stable_diffusion_folder_is_text_to_images(tiny_sd, tmp_path, capsys):
    from diffkit.cli import main
    from diffkit.images import save_grid
    from diffkit.interop.stable_diffusion import text_to_image
    folder, sd = tiny_sd
    assert main(["sample", "--checkpoint", str(folder), "--prompt", "hot", "--num", "2", "--steps", "2",
                 "--freeu", "1.5,1.6,0.9,0.2", "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    assert "FreeU b,s=1.5,1.6,0.9,0.2" in capsys.readouterr().out
    save_grid(text_to_image(sd, ["hot", "hot"], steps=2, seed=0, output_range="-1,1", freeu=FREEU),
              tmp_path / "expected.png", 8)
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert all(getattr(block, "b1", None) is None for block in sd.unet.up_blocks)


def test_edit_freeu_runs_the_unet_with_freeu(checkpoint, tmp_path, capsys):
    """`diffkit edit --freeu`: FreeU at 1,1,1,1 gives the plain edit (to FFT round-off, within one grey level),
    strong factors another one."""
    import numpy as np
    from PIL import Image

    from test_guidance import run_cli
    (tmp_path / "pngs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "pngs" / f"in_{i}.png")
    edits = {}
    for name, flag in (("plain", []), ("unit", ["--freeu", "1,1,1,1"]), ("strong", ["--freeu", "4,4,0.1,0.1"])):
        code, out = run_cli(capsys, "edit", "--checkpoint", checkpoint, "--images", tmp_path / "pngs", "--strength",
                            0.6, "--steps", 3, "--no-progress", "--device", "cpu", "--out", tmp_path / name, *flag)
        assert code == 0, out.err
        edits[name] = np.stack([np.asarray(Image.open(tmp_path / name / f"edit_0000{i}.png"), dtype=np.int16)
                                for i in range(2)])
    assert np.abs(edits["unit"] - edits["plain"]).max() <= 1
    assert np.abs(edits["strong"] - edits["plain"]).max() > 1


@pytest.mark.parametrize("value, match", [("1,2,3", "four positive numbers"), ("1,a,1,1", "b2='a'"),
                                          ("1,1,0,1", "s1=0.0")])
def test_a_bad_freeu_is_one_line_before_any_file(checkpoint, tmp_path, capsys, value, match):
    from test_guidance import run_cli
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoint, "--freeu", value, "--out",
                        tmp_path / "out" / "grid.png")
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0] and "--freeu" in lines[0]
    assert not (tmp_path / "out").exists()


def test_freeu_is_in_the_sample_cache_key(checkpoint, tmp_path):
    """`diffkit eval --freeu` samples inside freeu_enabled with the cache opened there: FreeU's factors are in
    the key (absent when off, so caches made before keep their folders), and a cached FreeU batch is never
    served to a run without it."""
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    from diffkit.sample_cache import denoiser_identity, open_cache
    denoiser = load_denoiser(checkpoint, device="cpu")
    assert "freeu" not in denoiser_identity(denoiser)
    runs = {}
    for freeu in (None, FREEU, None):
        with freeu_enabled(denoiser, freeu):
            cache = open_cache(tmp_path, denoiser)
            images = generate_samples(denoiser, 4, sampler="ddim", steps=2, batch_size=4, cache=cache)
        assert "freeu" not in denoiser_identity(denoiser)  # off again on exit
        assert cache.identity.get("freeu") == (None if freeu is None else [1.5, 1.6, 0.9, 0.2])
        runs.setdefault(freeu, []).append((images, cache.loaded))
    (plain, loaded0), (again, loaded1) = runs[None]
    assert loaded0 == 0 and loaded1 == 1 and torch.equal(plain, again)  # the plain batch, from the cache
    assert runs[FREEU][0][1] == 0 and not torch.equal(runs[FREEU][0][0], plain)  # its own key: drawn anew
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 2


def test_eval_refuses_freeu_with_samples_and_for_a_dit(tmp_path, capsys):
    from test_guidance import run_cli
    (tmp_path / "pngs").mkdir()
    code, out = run_cli(capsys, "eval", "--samples", tmp_path / "pngs", "--freeu", "1.5,1.6,0.9,0.2")
    assert code == 2 and "--freeu applies to sampling a --checkpoint" in out.err
    assert len(out.err.strip().splitlines()) == 1
    from diffkit.checkpoint import save_checkpoint
    from diffkit.commands._common import check_freeu_checkpoint
    for unet, what in (({"network": "dit"}, "DiT"), ({"network": "temporal-unet"}, "time-series model")):
        save_checkpoint(tmp_path / "m.safetensors", {"x": torch.zeros(1)}, {"unet": unet})
        with pytest.raises(DiffkitError, match=f"this {what} has none"):
            check_freeu_checkpoint(tmp_path / "m.safetensors", FREEU)
        check_freeu_checkpoint(tmp_path / "m.safetensors", None)  # off: nothing to check


def test_eval_freeu_records_it_and_keys_the_cache_with_it(checkpoint, tmp_path, capsys):
    """`diffkit eval --freeu`: the factors in the JSON's settings and in the cache's key.json; the same command
    without it draws its own batches (none reused from the FreeU run)."""
    import json

    from diffkit.metrics.evaluator import EvaluatorConfig, EvaluatorNet, save_evaluator
    from test_guidance import run_cli
    torch.manual_seed(0)
    save_evaluator(EvaluatorNet(EvaluatorConfig(image_size=8, channels=(4,), feature_dim=4)), tmp_path / "ev.st")
    common = ["eval", "--checkpoint", checkpoint, "--metrics", "fd-classifier", "--num", 4, "--steps", 2,
              "--evaluator", tmp_path / "ev.st", "--ref-num", 20, "--batch-size", 4, "--device", "cpu",
              "--cache-dir", tmp_path / "cache", "--no-progress"]
    code, out = run_cli(capsys, *common, "--freeu", "1.5,1.6,0.9,0.2", "--out", tmp_path / "on.json")
    assert code == 0, out.err
    assert json.loads((tmp_path / "on.json").read_text())["settings"]["freeu"] == [1.5, 1.6, 0.9, 0.2]
    keys = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/key.json")]
    assert [k["denoiser"].get("freeu") for k in keys] == [[1.5, 1.6, 0.9, 0.2]]
    code, out = run_cli(capsys, *common, "--out", tmp_path / "off.json")
    assert code == 0, out.err
    settings = json.loads((tmp_path / "off.json").read_text())["settings"]
    assert "freeu" not in settings and settings["cached_batches"] == 0
    assert len(list((tmp_path / "cache").glob("*/key.json"))) == 2
