"""Adaptive projected guidance (Sadat et al. 2025, arXiv:2410.02416, Alg. 1) on diffusers folders (SD 1.x, SD-XL,
SD3): every guided call of diffkit's sampling run against diffusers 0.42.1's own ``AdaptiveProjectedGuidance``
guider driven on the same conditional / unconditional x_0 predictions of the tiny random UNet / transformer, with
``use_original_formulation=True`` (pred_c + s update: the paper's D_c + (w - 1) update with s = diffkit's w);
options off bit for bit the plain guidance; bad values and combinations one-line errors."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers.guiders import AdaptiveProjectedGuidance  # noqa: E402
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer  # noqa: E402

from diffkit import diffusion  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.guidance import ClassifierFreeGuidance, adaptive_projected_update  # noqa: E402
from diffkit.interop import sd3 as sd3_module, stable_diffusion  # noqa: E402

from test_interop_diffusers import tiny_sd_pipeline  # noqa: E402
from test_interop_sd3 import tiny_sd3_pipeline  # noqa: E402
from test_interop_sd_xl import tiny_sd_xl_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "hot"]
APG = {"apg_eta": 0.25, "apg_norm_threshold": 0.5, "apg_momentum": -0.5}


class _Folders(dict):
    """{kind: (folder, loaded model, text_to_image)} of a tiny random SD 1.x, SD-XL or SD3 (no T5) folder, each
    written and loaded on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, kind):
        build = {"sd": tiny_sd_pipeline, "xl": tiny_sd_xl_pipeline,
                 "sd3": lambda r: tiny_sd3_pipeline(r, with_t5=False)}[kind]
        (self.root / kind).mkdir()
        folder = self.root / kind / "folder"
        build(self.root / kind).save_pretrained(folder)
        if kind == "sd3":
            self[kind] = (folder, sd3_module.load_sd3(folder, progress=False), sd3_module.text_to_image)
        else:
            self[kind] = (folder, stable_diffusion.load_stable_diffusion(folder, progress=False),
                          stable_diffusion.text_to_image)
        return self[kind]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return _Folders(tmp_path_factory.mktemp("apg_folders"))


@pytest.fixture(autouse=True)
def _built(request, folders):
    """The folder of a test's ``kind`` parameter, written in its setup (not in its timed call)."""
    kind = request.node.callspec.params.get("kind") if hasattr(request.node, "callspec") else None
    if kind is not None:
        folders[kind]


def _latents(model, seed=7):
    return torch.randn(model.latent_shape(len(PROMPTS)), generator=torch.Generator().manual_seed(seed))


def _run(kind, folders, **kw):
    _, model, text_to_image = folders[kind]
    with torch.no_grad():
        return text_to_image(model, PROMPTS, steps=3, guidance_scale=6.0, latents=_latents(model), return_latents=True,
                             **kw)


def _separate_passes(guide, x, t, y, cond):
    """The conditional and the unconditional prediction of one guided call, each its own network call of batch B."""
    c, n = dict(cond), dict(cond)
    n["context"] = guide.null_context.to(cond["context"].dtype).expand_as(cond["context"])
    for key in guide.null_cond.keys() & cond.keys():
        n[key] = guide.null_cond[key].to(cond[key].dtype).expand_as(cond[key])
    if y is not None:
        c["y"], n["y"] = y, torch.full_like(torch.as_tensor(y), guide.null_class)
    return guide.inner(x, t, **c), guide.inner(x, t, **n)


def recorded_guided_calls(monkeypatch, run, with_perturbed: bool = False) -> list:
    """(guide, x, t, y, cond, guided prediction) of every guided call of ``run()``; ``with_perturbed``: and PAG's
    (guidance, per-sample scale), or None, last."""
    calls, guide_call = [], ClassifierFreeGuidance._guide

    def recording(self, x, t, y, cond, perturbed=None):
        pred = guide_call(self, x, t, y, dict(cond), perturbed)
        calls.append((self, x.clone(), t, y, dict(cond), pred) + ((perturbed,) if with_perturbed else ()))
        return pred
    monkeypatch.setattr(ClassifierFreeGuidance, "_guide", recording)
    try:
        run()
    finally:
        monkeypatch.undo()
    return calls


def assert_calls_are_diffusers_apg_guider(calls, w, eta, norm_threshold, momentum, label=""):
    """Each recorded guided call's x_0 is diffusers' AdaptiveProjectedGuidance(use_original_formulation=True, s = w)
    on the same (x0_c, x0_u) to 2e-5 of its largest value, its MomentumBuffer carried across the calls in order, and
    its eps that x_0's, (x_t - alpha x0) / sigma; returns how many samples' running averages the threshold capped."""
    guider = AdaptiveProjectedGuidance(guidance_scale=w, adaptive_projected_guidance_momentum=momentum,
                                       adaptive_projected_guidance_rescale=norm_threshold, eta=eta,
                                       use_original_formulation=True)
    guider.momentum_buffer = MomentumBuffer(momentum)  # what its prepare_inputs does at step 0
    capped = 0
    for guide, x, t, y, cond, pred in calls:
        assert guide.w == w and (guide.apg_eta, guide.apg_norm_threshold, guide.apg_momentum) == (
            eta, norm_threshold, momentum)
        with torch.no_grad():
            cond_pred, null_pred = _separate_passes(guide, x, t, y, cond)
        theirs = guider.forward(pred_cond=cond_pred.x0, pred_uncond=null_pred.x0).pred
        capped += int((guider.momentum_buffer.running_average.flatten(1).norm(dim=1) > norm_threshold).sum())
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        alpha, sigma = (diffusion.expand(f(t64), x).to(x.dtype) for f in (guide.schedule.alpha, guide.schedule.sigma))
        scale = theirs.abs().max()
        assert (pred.x0 - theirs).abs().max() <= 2e-5 * scale, (label, t, (pred.x0 - theirs).abs().max())
        assert torch.allclose(pred.eps, (x - alpha * theirs) / sigma, atol=2e-4, rtol=1e-4), (label, t)
    return capped


def assert_calls_are_apg_guider_plus_pag(calls, w, eta, norm_threshold, momentum, pag_scale, label="") -> tuple:
    """Each recorded guided call with PAG (``recorded_guided_calls(with_perturbed=True)``) is diffusers'
    AdaptiveProjectedGuidance (use_original_formulation, s = w, its MomentumBuffer carried across the calls) on the
    call's separate (x0_c, x0_u), plus PAG's term S (x0_c - x0-hat_c), x0-hat_c the perturbed conditional pass (the
    second half of a 2B call through the guidance's own perturbation: diffkit's U-Net layers, or diffusers' PAG
    processors), to 2e-5 of its largest value; returns (the largest |diff|, the largest |x0|, how many samples'
    running averages the threshold capped)."""
    from diffkit.guidance import _repeated, _times64
    guider = AdaptiveProjectedGuidance(guidance_scale=w, adaptive_projected_guidance_momentum=momentum,
                                       adaptive_projected_guidance_rescale=norm_threshold, eta=eta,
                                       use_original_formulation=True)
    guider.momentum_buffer = MomentumBuffer(momentum)
    worst, largest, capped = 0.0, 0.0, 0
    for guide, x, t, y, cond, pred, perturbed in calls:
        with torch.no_grad():
            cond_pred, null_pred = _separate_passes(guide, x, t, y, cond)
            batch = x.shape[0]  # the perturbed pass: the second half of a 2B call (the processors' split)
            with perturbed[0].perturbing(batch, 2, x.device):
                skipped = guide.inner(torch.cat([x, x]), torch.cat([_times64(t, batch)] * 2),
                                      **_repeated(cond, batch, 2)).x0.chunk(2)[1]
        s = perturbed[1].to(x).reshape(-1, *[1] * (x.ndim - 1))
        theirs = guider.forward(pred_cond=cond_pred.x0, pred_uncond=null_pred.x0).pred + s * (cond_pred.x0 - skipped)
        capped += int((guider.momentum_buffer.running_average.flatten(1).norm(dim=1) > norm_threshold).sum())
        worst, largest = max(worst, float((pred.x0 - theirs).abs().max())), max(largest, float(theirs.abs().max()))
        assert float(s.min()) == pag_scale and (pred.x0 - theirs).abs().max() <= 2e-5 * theirs.abs().max(), \
            (label, t, (pred.x0 - theirs).abs().max())
    return worst, largest, capped


@pytest.mark.parametrize("kind", ["sd", "xl", "sd3"])
def test_each_guided_call_is_diffusers_apg_guider_on_the_x0_predictions(kind, folders, monkeypatch):
    """diffkit's guided x_0 at every call of a 3-step run (eta 0.25, r 0.5 reached, momentum -0.5 over the calls)
    is diffusers' AdaptiveProjectedGuidance(use_original_formulation=True, s = w) on the same (x0_c, x0_u), its
    MomentumBuffer carried across the calls; the eps is that x_0's, (x_t - alpha x0) / sigma."""
    calls = recorded_guided_calls(monkeypatch, lambda: _run(kind, folders, **APG))
    assert len(calls) == 3
    assert assert_calls_are_diffusers_apg_guider(calls, 5.0, 0.25, 0.5, -0.5, kind) > 0  # the threshold took effect


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_apg_off_is_bit_identical_and_on_changes_the_latents(kind, folders):
    plain = _run(kind, folders)
    assert torch.equal(_run(kind, folders, apg_eta=1.0, apg_norm_threshold=math.inf, apg_momentum=0.0), plain)
    assert (_run(kind, folders, apg_eta=0.0) - plain).abs().max() > 1e-3


def test_diffkit_apg_update_and_momentum_are_diffusers_guider_on_random_tensors():
    """ClassifierFreeGuidance's APG pieces (momentum, then the cap, then the projection onto D_c) on fixed float64
    tensors over four calls: diffusers' guider with use_original_formulation=True to 1e-12."""
    gen = torch.Generator().manual_seed(3)
    guider = AdaptiveProjectedGuidance(guidance_scale=2.5, adaptive_projected_guidance_momentum=-0.75,
                                       adaptive_projected_guidance_rescale=3.0, eta=0.4, use_original_formulation=True)
    guider.momentum_buffer = MomentumBuffer(-0.75)
    running = 0
    for _ in range(4):
        c, u = (torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
        running = (c - u) + -0.75 * running
        ours = c + 2.5 * adaptive_projected_update(running, c, 0.4, 3.0)
        assert (ours - guider.forward(pred_cond=c, pred_uncond=u).pred).abs().max() <= 1e-12


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_sample_command_takes_the_apg_flags(kind, folders, tmp_path, capsys):
    """`diffkit sample --checkpoint FOLDER --guidance-scale ... --apg-*`: the grid of text_to_image with those
    settings, byte for byte (SD: the seed convention, w = 5; SD3: diffusers', s = 4)."""
    from diffkit.cli import main
    from diffkit.images import save_grid
    folder, model, text_to_image = folders[kind]
    flags, apg = ((["--guidance-scale", "5", "--apg-eta", "0.5", "--apg-norm-threshold", "2"],
                   {"guidance_scale": 5.0, "convention": "seed", "apg_eta": 0.5, "apg_norm_threshold": 2.0})
                  if kind == "sd" else
                  (["--guidance-scale", "4", "--guidance-convention", "diffusers", "--apg-eta", "0", "--apg-momentum",
                    "-0.5"], {"guidance_scale": 4.0, "apg_eta": 0.0, "apg_momentum": -0.5}))
    out = tmp_path / "apg.png"
    assert main(["sample", "--checkpoint", str(folder), "--prompt", PROMPTS[1], "--num", "1", "--steps", "2",
                 "--seed", "5", *flags, "--out", str(out), "--no-progress"]) == 0
    with torch.no_grad():
        images = text_to_image(model, PROMPTS[1:], steps=2, seed=5, output_range="-1,1", **apg)
    save_grid(images, tmp_path / "expected.png", 8)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    capsys.readouterr()


@pytest.mark.parametrize("kind", ["sd", "sd3"])
@pytest.mark.parametrize("kwargs, pattern", [
    ({"apg_eta": 1.5}, r"apg_eta=1\.5"), ({"apg_norm_threshold": 0.0}, "apg_norm_threshold=0"),
    ({"apg_momentum": -1.0}, "apg_momentum=-1")])
def test_bad_apg_values_are_one_line_errors_in_the_library(kind, folders, kwargs, pattern):
    _, model, text_to_image = folders[kind]
    with pytest.raises(DiffkitError, match=pattern) as err:
        text_to_image(model, PROMPTS, steps=1, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["xl"])
def test_cli_apg_mistakes_on_folders_are_one_line_errors_before_any_output(kind, folders, tmp_path, capsys):
    from diffkit.cli import main
    out = tmp_path / "new" / "s.png"
    for extra, message in (
            ([folders["xl"][0], "--guidance-scale", "5", "--apg-eta", "2"], "--apg-eta"),
            ([folders["xl"][0], "--apg-momentum", "-0.5"], "--apg-momentum needs --guidance-scale"),
            ([folders["xl"][0], "--guidance-scale", "0", "--apg-eta", "0"],
             "--apg-eta shapes classifier-free guidance, which --guidance-scale 0 (seed convention) turns off"),
            ([folders["xl"][0], "--guidance-scale", "1", "--guidance-convention", "diffusers", "--apg-momentum",
              "-0.5"], "--apg-momentum shapes classifier-free guidance, which --guidance-scale 1 (diffusers"),
            ([folders["xl"][0], "--guidance-scale", "5", "--apg-eta", "0", "--refiner", folders["xl"][0]],
             "--apg-eta with --refiner is not supported")):
        code = main(["sample", "--checkpoint", str(extra[0]), *map(str, extra[1:]), "--prompt", "a cat", "--steps",
                     "1", "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (extra, err)
        assert not out.parent.exists()


@pytest.mark.parametrize("flag", ["apg_eta", "apg_norm_threshold", "apg_momentum"])
def test_apg_is_refused_for_a_flux_folder_even_at_zero(flag, tmp_path):
    """FLUX's --guidance-scale is its embedded guidance (no null pass to project): every APG flag is refused in one
    line before any weight is read, --apg-eta 0 too (it was let through as if it were an unset 0)."""
    from diffkit.commands._flux import sample_flux
    from diffkit.commands.sample import GuidanceRequest
    value = 1.0 if flag == "apg_norm_threshold" else 0.0
    with pytest.raises(DiffkitError, match=f"--{flag.replace('_', '-')} does not apply to a FLUX folder") as err:
        sample_flux(tmp_path / "no_such_folder", guidance=GuidanceRequest(prompts=["a cat"], guidance_scale=3.0,
                                                                           **{flag: value}))
    assert "\n" not in str(err.value)


def lcm_json_folder(folder, lcm):
    """A copy of the SD ``folder``'s JSON (no weights) at ``lcm``: an LCMScheduler and a UNet with a guidance
    input (time_cond_proj_dim 8), for refusals made before any weight is read."""
    import json
    import shutil
    shutil.copytree(folder, lcm, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (lcm / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        **json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), "_class_name": "LCMScheduler"}))
    (lcm / "unet" / "config.json").write_text(json.dumps({
        **json.loads((folder / "unet" / "config.json").read_text()), "time_cond_proj_dim": 8}))
    return lcm


@pytest.mark.parametrize("kind", ["sd"])
def test_apg_is_refused_for_an_lcm_unet_that_takes_w_as_its_input(kind, folders, tmp_path, capsys, monkeypatch):
    """An LCM UNet with a guidance input (time_cond_proj_dim) has no null pass to project: one line in the library
    and, from the folder's JSON before any weight is read, on the command line."""
    from diffkit.cli import main
    folder, sd, text_to_image = folders["sd"]
    lcm = lcm_json_folder(folder, tmp_path / "lcm")
    out = tmp_path / "new" / "s.png"
    assert main(["sample", "--checkpoint", str(lcm), "--prompt", "a cat", "--guidance-scale", "3", "--apg-momentum",
                 "-0.5", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--apg-momentum is an option of classifier-free guidance; this LCM" in err[0], err
    assert not out.parent.exists()
    monkeypatch.setattr(type(sd), "guidance_embedding_dim", property(lambda self: 8))
    with pytest.raises(DiffkitError, match=r"apg_eta=0\.0 is not allowed: this LCM UNet takes the guidance weight"):
        text_to_image(sd, PROMPTS, steps=1, guidance_scale=3.0, apg_eta=0.0)


@pytest.mark.parametrize("kind, perturbed", [("sd", {"pag_scale": 2.0}),
                                             ("sd3", {"skip_guidance_layers": [0], "skip_layer_guidance_stop": 0.9})])
def test_apg_under_pag_and_skip_layer_guidance(kind, perturbed, folders, monkeypatch):
    """PAG (SD) / SLG (SD3) over the APG guidance: one batched call of 3 halves, the perturbed term added after the
    APG one (its formula: tests/test_apg.py); APG off is the perturbed run bit for bit, on it changes it."""
    plain = _run(kind, folders, **perturbed)
    assert torch.equal(_run(kind, folders, **perturbed, apg_eta=1.0), plain)
    seen, guide_call = [], ClassifierFreeGuidance._guide

    def recording(self, x, t, y, cond, perturbed=None):
        seen.append((self.apg_eta, self.apg_momentum, perturbed is not None))
        return guide_call(self, x, t, y, cond, perturbed)
    monkeypatch.setattr(ClassifierFreeGuidance, "_guide", recording)
    assert (_run(kind, folders, **perturbed, apg_eta=0.0, apg_momentum=-0.5) - plain).abs().max() > 1e-3
    assert (0.0, -0.5, True) in seen
