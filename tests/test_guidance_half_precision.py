"""Guidance and editing with a half-precision model (issue 4: "with an fp16/bf16 model output every
sampler stays finite and close to the fp32 result on the analytic model").

Classifier-free guidance, classifier guidance (Algorithms 1 and 2), reconstruction guidance,
static and dynamic thresholding, inpainting (replacement, RePaint, with reconstruction guidance)
and SDEdit run on the exact denoiser of Gaussian data (:mod:`diffkit.analytic`) in three precisions:
its output rounded to float16 or to bfloat16 (``conftest.rounded_output``, as the samplers'
half-precision tests), or made by a float32 matmul that autocast runs in bfloat16 with the whole
call inside ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the wrappers' own arithmetic, the
thresholding quantile and the gradients then run under autocast too). Each result is finite,
float32, not the float32 run's (the rounding reached it) and within ``amplification * u`` of it in
relative RMS, u the format's unit roundoff (2^-11 float16, 2^-8 bfloat16).

The tolerance. Rounding to nearest gives each model output a relative error of at most u/2,
u / (2 sqrt 3) in RMS. On the 20-step DDIM grid the eps error of step t -> s enters x_s with the
factor c = alpha_s |sigma_s / alpha_s - sigma_t / alpha_t| and, for data of unit variance, the flow
carries it to x_0 unchanged: the c sum to 6.1 (all roundings aligned: 3.1 u) and their root sum of
squares is 1.53 (independent roundings: 1.53 u / (2 sqrt 3) = 0.44 u). An unguided path is allowed
u, 2.3 times the independent-roundings figure (the DDPM and DPM-Solver++(2M) paths are held to
the same; measured at most 0.58 u over all, docs/editing.md "Half precision"). Clipping and
dynamic thresholding are 1-Lipschitz in x_0, inpainting's replacement and SDEdit's noising add
nothing, and classifier guidance adds a float32 gradient: amplification 1 for all of them. Reconstruction guidance's gradient flows back
through the rounded output, so the correction carries u/2 of its own size, which is small next to
x_0: amplification 1. Classifier-free guidance mixes two independently rounded predictions with
weights 1 + w and w: amplification 1 + 2w. The Gaussian data for the editing paths is a single
correlated Gaussian: a mixture's flow map is steep between its modes (there the rounding moved 4
of 64 coordinates of a two-mode mixture's samples by up to 30 u); the guidance tests use the
two-class mixture, whose guided samples are pulled into their class, away from that boundary.
"""
import contextlib

import pytest
import torch

import diffkit
from conftest import rounded_output
from diffkit import Denoiser
from diffkit.analytic import GaussianMixture
from diffkit.guidance import (ClassifierFreeGuidance, ClassifierGuidance, ReconstructionGuidance,
                              classifier_guided_ddpm, classifier_log_prob_grad)
from diffkit.sampling import sampler_grid
from diffkit.samplers.registry import get_sampler
from test_guidance import SCHEDULE, LinearClassifier, MixtureWithNullClass, exact_classifier, mixture

UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
PRECISIONS = ["float16", "bfloat16", "autocast"]
STEPS = 20
CLASSES = mixture()  # two classes in 2-D (tests/test_guidance.py)
GAUSS = GaussianMixture([1.0], [[0.5, -0.5]], [[[1.0, 0.8], [0.8, 1.0]]])  # correlated; x_0 often beyond [-1, 1]
NOISE = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(64) % 2
KNOWN = GAUSS.sample(64, torch.Generator().manual_seed(3))[0].float()
MASK = torch.tensor([0.0, 1.0]).expand(64, 2)  # dim 1 repainted, dim 0 known (correlated with it)


class Bf16Matmul:
    """``net``'s output through a float32 matmul with the identity, which autocast runs in
    bfloat16 (what a network's last layer gives under ``torch.autocast``)."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, t, **cond):
        out = self.net(x, t, **cond).float()
        return out @ torch.eye(out.shape[-1])


def low_precision(precision):
    """(wrap(net), context, unit roundoff) of a precision."""
    if precision == "autocast":
        return Bf16Matmul, torch.autocast("cpu", dtype=torch.bfloat16), UNIT_ROUNDOFF[torch.bfloat16]
    dtype = getattr(torch, precision)
    return (lambda net: rounded_output(net, dtype)), contextlib.nullcontext(), UNIT_ROUNDOFF[dtype]


def deviation(run, precision):
    """(output, float32 reference, relative RMS deviation in units of u) of ``run(wrap)``, wrap
    giving the network the precision, run inside the precision's context."""
    reference = run(lambda net: net)
    wrap, context, unit = low_precision(precision)
    with context:
        out = run(wrap)
    return out, reference, ((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item() / unit


def assert_close_to_float32(run, precision, amplification):
    """``run(wrap)`` is finite, float32, not the float32 result and within ``amplification * u`` of
    it in relative RMS."""
    out, reference, deviation_u = deviation(run, precision)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert not torch.equal(out, reference)  # the rounding reached the result
    assert deviation_u < amplification, f"{precision}: {deviation_u:.3g} u > {amplification} u"


def gauss_denoiser(wrap):
    return Denoiser(wrap(GAUSS.network(SCHEDULE)), SCHEDULE)


# ------------------------------------------------------------------ the paths
W = 2.0  # classifier-free guidance weight
GRID = sampler_grid(Denoiser(CLASSES.network(SCHEDULE), SCHEDULE), get_sampler("ddpm"), STEPS)


def cfg(sampler, **options):
    def run(wrap):
        guided = ClassifierFreeGuidance(Denoiser(wrap(MixtureWithNullClass(CLASSES)), SCHEDULE), W, null_class=2,
                                        **options)
        return diffkit.sample(guided, NOISE, sampler, STEPS, cond={"y": LABELS}, progress=False)
    return run


def classifier_algorithm_2(wrap):
    guided = ClassifierGuidance(Denoiser(wrap(CLASSES.network(SCHEDULE)), SCHEDULE), exact_classifier(CLASSES), 2.0)
    return diffkit.sample(guided, NOISE, "ddim", STEPS, cond={"y": LABELS}, progress=False)


def classifier_algorithm_1(wrap):
    return classifier_guided_ddpm(Denoiser(wrap(CLASSES.network(SCHEDULE)), SCHEDULE), exact_classifier(CLASSES),
                                  NOISE, GRID, scale=2.0, y=LABELS, generator=torch.Generator().manual_seed(1))


def reconstruction_guidance(wrap):
    guided = ReconstructionGuidance(gauss_denoiser(wrap), KNOWN, MASK, 2.0)
    out = diffkit.sample(guided, NOISE, "ddim", STEPS, progress=False)
    assert guided.gradient_calls == STEPS
    return out


def thresholded(mode, **options):
    return lambda wrap: diffkit.sample(gauss_denoiser(wrap), NOISE, "ddim", STEPS, thresholding=mode,
                                       progress=False, **options)


def inpainted(sampler, **options):
    def run(wrap):
        out = diffkit.inpaint(gauss_denoiser(wrap), KNOWN, MASK, sampler, STEPS, seed=0, progress=False,
                              value_range=None, **options)
        assert torch.equal(out[:, 0], KNOWN[:, 0])  # the known pixels pasted back exactly
        return out
    return run


# name: (run(wrap), amplification of u; the module docstring derives them)
PATHS = {
    "classifier-free w=2, ddim": (cfg("ddim"), 1 + 2 * W),
    "classifier-free w=2 rescale 0.7, dpm-solver++-2m": (cfg("dpm-solver++-2m", rescale=0.7), 1 + 2 * W),
    "classifier guidance s=2 (Alg. 2), ddim": (classifier_algorithm_2, 1),
    "classifier guidance s=2 (Alg. 1), ddpm": (classifier_algorithm_1, 1),
    "reconstruction guidance w=2, ddim": (reconstruction_guidance, 1),
    "thresholding clip, ddim": (thresholded("clip"), 1),
    "thresholding dynamic (ratio 0.6), ddim": (thresholded("dynamic", dynamic_thresholding_ratio=0.6), 1),
    "inpaint, ddim": (inpainted("ddim"), 1),
    "inpaint, ddpm": (inpainted("ddpm"), 1),
    "RePaint (jump 5, 2 samples), ddpm": (inpainted("ddpm", jump_n_sample=2, jump_length=5), 1),
    "inpaint + reconstruction w=2, ddim": (inpainted("ddim", reconstruction_weight=2.0), 1),
    "inpaint + dynamic thresholding, ddim": (inpainted("ddim", thresholding="dynamic"), 1),
    "SDEdit strength 0.6, ddim": (lambda wrap: diffkit.img2img(gauss_denoiser(wrap), KNOWN, 0.6, "ddim", STEPS, seed=0,
                                                              progress=False, value_range=None), 1),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("path", list(PATHS))
def test_each_path_stays_finite_and_close_to_float32(path, precision):
    run, amplification = PATHS[path]
    assert_close_to_float32(run, precision, amplification)


def test_the_thresholding_acts_on_this_data():
    plain = diffkit.sample(gauss_denoiser(lambda net: net), NOISE, "ddim", STEPS, progress=False)
    for mode in ("clip", "dynamic"):
        run = PATHS[next(name for name in PATHS if name.startswith(f"thresholding {mode}"))][0]
        assert (run(lambda net: net) - plain).abs().max() > 0.1, mode


# ------------------------------------------------------------------ the classifier's gradient; inputs' dtypes
def linear_classifier_gradient(clf, x, t, y):
    """grad_x log softmax(W x + b t / 1000)_y = W_y - sum_k p_k W_k, in float64."""
    W, b = clf.W.double(), clf.b.double()
    p = torch.softmax(x.double() @ W.T + b * (t / 1000), dim=1)
    return W[y] - p @ W


def test_the_classifier_gradient_is_float32_under_autocast():
    """diffkit.sample holds a mixed-precision denoiser's autocast open around the whole loop; the
    classifier's gradient is still taken in float32 (a bfloat16 one would be off by ~u_bf16 = 4e-3)."""
    clf = LinearClassifier(2, 2)
    x = NOISE[:8]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad = classifier_log_prob_grad(clf, x, 500, LABELS[:8])
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), linear_classifier_gradient(clf, x, 500, LABELS[:8]), rtol=0, atol=1e-6)


class WeightedLinearClassifier(LinearClassifier):
    """:class:`LinearClassifier` with its W and b as the module's (float32) parameters."""

    def __init__(self, dim, classes):
        super().__init__(dim, classes)
        self.W, self.b = (torch.nn.Parameter(p, requires_grad=False) for p in (self.W, self.b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_the_classifier_runs_in_its_weights_dtype_and_the_gradient_returns_in_x_dtype(dtype):
    """Samples held in another precision than a float32 classifier's: it receives x in float32
    (x's dtype, which its matmul refuses, was passed before), for a module its weights' dtype, for
    a callable without weights half precision promoted to float32; the gradient comes back in x's
    dtype, the closed form at x's values rounded once to it."""
    x = NOISE[:8].to(dtype)
    den = Denoiser(CLASSES.network(SCHEDULE), SCHEDULE)
    half = dtype in UNIT_ROUNDOFF
    for clf in [WeightedLinearClassifier(2, 2)] + ([LinearClassifier(2, 2)] if half else []):
        grad = classifier_log_prob_grad(clf, x, 500, LABELS[:8])
        exact = linear_classifier_gradient(clf, x, 500, LABELS[:8])
        assert grad.dtype == dtype
        torch.testing.assert_close(grad, exact.to(dtype), rtol=2 * UNIT_ROUNDOFF[dtype] if half else 1e-6,
                                   atol=1e-6)  # one ulp of x's dtype, or float32's round-off
        guided = ClassifierGuidance(den, clf, 2.0)(x, 500, y=LABELS[:8])
        assert guided.eps.dtype == dtype and bool(torch.isfinite(guided.eps).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_algorithm_1_promotes_half_precision_noise_to_float32(dtype):
    """As diffkit.sample does (check_noise): the steps run in float32, not in the noise's dtype."""
    noise = NOISE.to(dtype)
    den = Denoiser(CLASSES.network(SCHEDULE), SCHEDULE)
    out, expected = (classifier_guided_ddpm(den, exact_classifier(CLASSES), x, GRID, scale=2.0, y=LABELS,
                                            generator=torch.Generator().manual_seed(1)) for x in (noise, noise.float()))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_half_precision_images_and_masks_are_promoted():
    """bfloat16 images and a float16 mask (values in [0, 1] that both formats hold exactly) give
    the float32 inputs' result, in float32."""
    images, mask = KNOWN.bfloat16(), torch.tensor([0.25, 1.0]).expand(64, 2).half()
    out = diffkit.inpaint(gauss_denoiser(lambda net: net), images, mask, "ddim", 5, seed=0, progress=False,
                          value_range=None)
    expected = diffkit.inpaint(gauss_denoiser(lambda net: net), images.float(), mask.float(), "ddim", 5, seed=0,
                               progress=False, value_range=None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from test_guidance import write_classifier, write_model_checkpoint
    d = tmp_path_factory.mktemp("half")
    return {"cond": write_model_checkpoint(d / "cond.safetensors", 3),
            "uncond": write_model_checkpoint(d / "uncond.safetensors", None),
            "classifier": write_classifier(d / "classifier.safetensors", 3), "dir": d}


@pytest.mark.parametrize("name,amplification", [("cfg", 1 + 2 * 2.0), ("classifier", 1), ("algorithm-1", 1)])
def test_cli_sample_mixed_precision_bf16_with_guidance(checkpoints, monkeypatch, name, amplification):
    """``diffkit sample --mixed-precision bf16`` with classifier-free guidance (w = 2) or classifier
    guidance (Algorithm 2, or 1 with ddpm): the network runs under autocast, the classifier outside
    it on float32 input, and the samples (float32, before the PNG's clamp and quantisation) are finite
    and within amplification * 8 u of the float32 run. 8 u bounds the tiny random U-Nets' own error
    under bfloat16 autocast (per call 2.6 - 4.8 u relative RMS measured; they compute in bfloat16
    with float32 accumulation), and the amplifications are those of the module docstring."""
    import diffkit.images
    from diffkit.cli import main
    from diffkit.models.classifier import EncoderClassifier
    from diffkit.models.unet import UNet
    grids, network, classifier = [], [], []
    monkeypatch.setattr(diffkit.images, "save_grid", lambda images, *args, **kwargs: grids.append(images))
    for cls, seen in ((UNet, network), (EncoderClassifier, classifier)):
        def forward(self, x, *args, _real=cls.forward, _seen=seen, **kwargs):
            _seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
            return _real(self, x, *args, **kwargs)
        monkeypatch.setattr(cls, "forward", forward)
    args = {"cfg": ["--checkpoint", checkpoints["cond"], "--guidance-scale", 2, "--steps", 5],
            "classifier": ["--checkpoint", checkpoints["uncond"], "--classifier", checkpoints["classifier"],
                           "--classifier-scale", 2, "--steps", 5],
            "algorithm-1": ["--checkpoint", checkpoints["uncond"], "--classifier", checkpoints["classifier"],
                            "--classifier-scale", 2, "--classifier-algorithm", 1, "--sampler", "ddpm",
                            "--steps", 5]}[name]
    samples = {}
    for precision in ("no", "bf16"):
        network.clear(), classifier.clear()
        assert main([str(a) for a in ("sample", *args, "--class", 1, "--num", 4, "--mixed-precision", precision,
                                      "--out", checkpoints["dir"] / f"{name}.png", "--no-progress",
                                      "--device", "cpu")]) == 0
        samples[precision] = grids[-1]
        assert {autocast for _, autocast in network} == {precision == "bf16"}
        assert {dtype for dtype, _ in classifier} <= {torch.float32}
        assert not any(autocast for _, autocast in classifier)
        assert bool(classifier) == (name != "cfg")
    out, reference = samples["bf16"], samples["no"]
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all()) and not torch.equal(out, reference)
    deviation = ((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item() / 2.0 ** -8
    assert deviation < amplification * 8, f"{name}: {deviation:.3g} u"


@pytest.mark.parametrize("edit,amplification", [("inpaint", 1), ("inpaint-reconstruction", 2), ("repaint", 1),
                                                ("sdedit", 1)])
def test_cli_edit_mixed_precision_bf16(checkpoints, monkeypatch, edit, amplification):
    """``diffkit edit --mixed-precision bf16``: the network runs under autocast (reconstruction
    guidance's gradient through it too), and the edited images (float32, before the clamp) are
    finite and within amplification * 8 u of the float32 run (8 u: the tiny U-Net's own bfloat16
    error, as above). Amplification 1 for the editing paths; 2 with reconstruction guidance: its
    gradient is back-propagated through the network in bfloat16, and on this random U-Net the
    correction is 0.15 - 2.2 times the size of x_0 and carries 6.6 - 10.4 u (the forward's x_0
    0.4 - 3.8 u; measured at t = 20 ... 999)."""
    import numpy as np
    from PIL import Image

    import diffkit.editing
    from diffkit.cli import main
    from diffkit.models.unet import UNet
    d = checkpoints["dir"]
    rng = np.random.default_rng(0)
    (d / "pngs").mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(d / "pngs" / f"in_{i}.png")
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255  # repaint the right half
    Image.fromarray(mask, "L").save(d / "mask.png")
    edited, network = [], []
    for name in ("inpaint", "img2img"):
        def record(*args, _real=getattr(diffkit.editing, name), **kwargs):
            edited.append(_real(*args, **kwargs))
            return edited[-1]
        monkeypatch.setattr(diffkit.editing, name, record)

    def forward(self, x, *args, _real=UNet.forward, **kwargs):
        network.append(torch.is_autocast_enabled("cpu"))
        return _real(self, x, *args, **kwargs)
    monkeypatch.setattr(UNet, "forward", forward)
    args = {"inpaint": ["--mask", d / "mask.png"],
            "inpaint-reconstruction": ["--mask", d / "mask.png", "--reconstruction-weight", 2],
            "repaint": ["--mask", d / "mask.png", "--sampler", "ddpm", "--jump-n-sample", 2, "--jump-length", 2],
            "sdedit": ["--strength", 0.6]}[edit]
    samples = {}
    for precision in ("no", "bf16"):
        network.clear()
        assert main([str(a) for a in ("edit", "--checkpoint", checkpoints["uncond"], "--images", d / "pngs",
                                      *args, "--steps", 5, "--mixed-precision", precision,
                                      "--out", d / f"edit-{edit}-{precision}", "--no-progress",
                                      "--device", "cpu")]) == 0
        samples[precision] = edited[-1]
        assert network and set(network) == {precision == "bf16"}
    out, reference = samples["bf16"], samples["no"]
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all()) and not torch.equal(out, reference)
    deviation = ((out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item() / 2.0 ** -8
    assert deviation < amplification * 8, f"{edit}: {deviation:.3g} u"


@pytest.fixture(scope="module")
def series_checkpoint(tmp_path_factory):
    """(checkpoint, rows, column min, column max) of tests/test_cli_forecast.py's tiny series run."""
    import numpy as np

    from diffkit.cli import main
    from test_cli_forecast import SMALL, write_rows
    root = tmp_path_factory.mktemp("series")
    t = np.arange(80)
    values = np.stack([50 + 10 * np.sin(t / 4), 0.5 * t - 3, np.random.default_rng(0).normal(0, 2, 80)], axis=1)
    assert main(["train", "--dataset", "series", "--data-dir", str(write_rows(root / "data.csv", values)), "--out",
                 str(root / "run"), "--steps", "10", "--no-progress", "--no-sample", "--device", "cpu",
                 "--set=drop_columns=date", "--set=test_fraction=0.25", *SMALL]) == 0
    return root / "run" / "checkpoints" / "latest.safetensors", values, values[:60].min(0), values[:60].max(0)


def test_cli_edit_series_mixed_precision_bf16(series_checkpoint, tmp_path, monkeypatch):
    """``diffkit edit --series --mixed-precision bf16`` (forecast with reconstruction guidance, its
    default): the series network runs under autocast and the forecast, in the file's units, lies
    within 16 u (as the image case with reconstruction guidance) of the training range of each
    column from the float32 one."""
    import numpy as np

    from diffkit.cli import main
    from diffkit.loading import load_denoiser
    from test_cli_forecast import read_out, write_rows
    checkpoint, values, low, high = series_checkpoint
    network_class = type(load_denoiser(checkpoint).model)
    autocast = []

    def forward(self, x, *args, _real=network_class.forward, **kwargs):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return _real(self, x, *args, **kwargs)
    monkeypatch.setattr(network_class, "forward", forward)
    history = write_rows(tmp_path / "history.csv", values[62:68])
    forecasts = {}
    for precision in ("no", "bf16"):
        autocast.clear()
        assert main(["edit", "--checkpoint", str(checkpoint), "--series", str(history), "--horizon", "2", "--num", "3",
                     "--steps", "4", "--mixed-precision", precision, "--out", str(tmp_path / f"{precision}.csv"),
                     "--no-progress"]) == 0
        assert autocast and set(autocast) == {precision == "bf16"}
        forecasts[precision] = read_out(tmp_path / f"{precision}.csv")[1][:, 1:]
    difference = np.abs(forecasts["bf16"] - forecasts["no"]) / (high - low)
    assert np.isfinite(forecasts["bf16"]).all() and difference.max() < 16 * 2.0 ** -8, difference.max()
