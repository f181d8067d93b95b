"""Guidance and editing with a half-precision model (issue 4: "with an fp16/bf16 model output every
sampler stays finite and close to the fp32 result on the analytic model").

Classifier-free guidance, classifier guidance (Algorithms 1 and 2), reconstruction guidance,
static and dynamic thresholding, inpainting (replacement, RePaint, with reconstruction guidance)
and SDEdit run on the exact denoiser of Gaussian data (:mod:`diffkit.analytic`) in three precisions:
its output rounded to float16 or to bfloat16 (``conftest.rounded_output``, as the samplers'
half-precision tests), or passed through a last layer that autocast runs in bfloat16 (a product
with a random orthogonal Q, undone in float32: ``Bf16Matmul``) with the whole call inside
``torch.autocast("cpu", dtype=torch.bfloat16)`` (the wrappers' own arithmetic, the thresholding
quantile and the gradients then run under autocast too). Each result is finite, float32, not the
float32 run's (the rounding reached it; under autocast not the bfloat16 column's either) and within
``amplification * u`` of it in relative RMS (sqrt 2 times that under autocast: two roundings per
call), u the format's unit roundoff (2^-11 float16, 2^-8 bfloat16).

The float32 run, the reference of those columns, is held to a float64 result: for the guided paths
the guidance formulas written out here from the mixture's exact eps (no wrapper code), for the
others the path run in float64 (NOISE.double(); the analytic model computes in float64). A rounding
in the guidance wrappers' own arithmetic happens in the float32 run as in the half-precision ones,
so of these tests only this check sees it; for the other paths the float64 run shares the code, so
this check sees float32's arithmetic, not a rounding made at every dtype (docs/editing.md "Half
precision" says which mutation then fails only the float16 column). The bound is 16 u_fp32 (u_fp32 =
2^-24; 2^-12 u_bf16): the float32 run rounds every operation, the same derivation as below gives
about 0.44 u_fp32 per rounded quantity and a path has a few (measured 1.0 - 3.0 u_fp32), while one
bfloat16 rounding of a quantity that reaches the samples costs u_bf16 / (2 sqrt 3), 18900 u_fp32,
where it acts.

The tolerance. Rounding to nearest gives each model output a relative error of at most u/2,
u / (2 sqrt 3) in RMS. On the 20-step DDIM grid the eps error of step t -> s enters x_s with the
factor c = alpha_s |sigma_s / alpha_s - sigma_t / alpha_t| and, for data of unit variance, the flow
carries it to x_0 unchanged: the c sum to 6.1 (all roundings aligned: 3.1 u) and their root sum of
squares is 1.53 (independent roundings: 1.53 u / (2 sqrt 3) = 0.44 u). An unguided path is allowed
u, 2.3 times the independent-roundings figure (the DDPM and DPM-Solver++(2M) paths are held to
the same; measured at most 0.58 u with one rounding per call, 0.70 u with autocast's two,
docs/editing.md "Half precision"). Clipping and
dynamic thresholding are 1-Lipschitz in x_0, inpainting's replacement and SDEdit's noising add
nothing, and classifier guidance adds a float32 gradient: amplification 1 for all of them. Reconstruction guidance's
gradient flows back through the rounded output, so the correction carries u/2 of its own size, which is small next to
x_0: amplification 1. Classifier-free guidance mixes two independently rounded predictions with
weights 1 + w and w: amplification 1 + 2w. The Gaussian data for the editing paths is a single
correlated Gaussian; the guidance tests use the two-class mixture, whose guided samples are pulled
into their class. A mixture's flow map is steep between its modes, so a coordinate there can move
by more than the bound; unguided on this mixture 1 of 128 coordinates moved by more than 2 u, the
largest by 3.1 u (benchmarks/half_precision_guidance.py).
"""
import contextlib

import numpy as np
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
    """``net``'s output through a last layer that autocast runs in bfloat16, as a network's under
    ``torch.autocast``: a product with a fixed random orthogonal Q (its input and result rounded to
    bfloat16, float32 accumulation), then, outside autocast in float32, the inverse of the bfloat16 Q
    that was used, so the exact result is the output itself. (A product with the identity would be
    exactly one bfloat16 rounding, the bfloat16 column's.)"""

    def __init__(self, net):
        self.net = net

    def __call__(self, x, t, **cond):
        out = self.net(x, t, **cond).float()
        q = torch.linalg.qr(torch.randn(out.shape[-1], out.shape[-1], generator=torch.Generator().manual_seed(5)))[0]
        rotated = out @ q  # bfloat16 under autocast
        with torch.autocast(x.device.type, enabled=False):
            return rotated.float() @ torch.linalg.inv(q.bfloat16().double()).float()


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


def tolerance(amplification, precision):
    """The bound in u: ``amplification`` per rounding of the model output, sqrt 2 times it under
    autocast, whose last layer rounds twice per call (its input and its product) independently."""
    return amplification * (2 ** 0.5 if precision == "autocast" else 1)


def assert_close_to_float32(run, precision, amplification):
    """``run(wrap)`` is finite, float32, not the float32 result and within ``tolerance`` of it in
    relative RMS."""
    out, reference, deviation_u = deviation(run, precision)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert not torch.equal(out, reference)  # the rounding reached the result
    bound = tolerance(amplification, precision)
    assert deviation_u < bound, f"{precision}: {deviation_u:.3g} u > {bound:.3g} u"
    if precision == "autocast":  # the last layer's product rounds: not one rounding of the output
        assert not torch.equal(out, deviation(run, "bfloat16")[0])


def gauss_denoiser(wrap):
    return Denoiser(wrap(GAUSS.network(SCHEDULE)), SCHEDULE)


# ------------------------------------------------------------------ the paths
W = 2.0  # classifier-free guidance weight
GRID = sampler_grid(Denoiser(CLASSES.network(SCHEDULE), SCHEDULE), get_sampler("ddpm"), STEPS)


def cfg(sampler, **options):
    def run(wrap, dtype=torch.float32):
        guided = ClassifierFreeGuidance(Denoiser(wrap(MixtureWithNullClass(CLASSES)), SCHEDULE), W, null_class=2,
                                        **options)
        return diffkit.sample(guided, NOISE.to(dtype), sampler, STEPS, cond={"y": LABELS}, progress=False)
    return run


def classifier_algorithm_2(wrap, dtype=torch.float32):
    guided = ClassifierGuidance(Denoiser(wrap(CLASSES.network(SCHEDULE)), SCHEDULE), exact_classifier(CLASSES), 2.0)
    return diffkit.sample(guided, NOISE.to(dtype), "ddim", STEPS, cond={"y": LABELS}, progress=False)


def classifier_algorithm_1(wrap, dtype=torch.float32):
    return classifier_guided_ddpm(Denoiser(wrap(CLASSES.network(SCHEDULE)), SCHEDULE), exact_classifier(CLASSES),
                                  NOISE.to(dtype), GRID, scale=2.0, y=LABELS,
                                  generator=torch.Generator().manual_seed(1))


def reconstruction_guidance(wrap, dtype=torch.float32):
    guided = ReconstructionGuidance(gauss_denoiser(wrap), KNOWN.to(dtype), MASK.to(dtype), 2.0)
    out = diffkit.sample(guided, NOISE.to(dtype), "ddim", STEPS, progress=False)
    assert guided.gradient_calls == STEPS
    return out


def thresholded(mode, **options):
    return lambda wrap, dtype=torch.float32: diffkit.sample(gauss_denoiser(wrap), NOISE.to(dtype), "ddim", STEPS,
                                                            thresholding=mode, progress=False, **options)


def inpainted(sampler, **options):
    def run(wrap, dtype=torch.float32):
        known = KNOWN.to(dtype)
        out = diffkit.inpaint(gauss_denoiser(wrap), known, MASK.to(dtype), sampler, STEPS, seed=0, progress=False,
                              value_range=None, **options)
        assert torch.equal(out[:, 0], known[:, 0])  # the known pixels pasted back exactly
        return out
    return run


def sdedit(wrap, dtype=torch.float32):
    return diffkit.img2img(gauss_denoiser(wrap), KNOWN.to(dtype), 0.6, "ddim", STEPS, seed=0, progress=False,
                           value_range=None)


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
    "SDEdit strength 0.6, ddim": (sdedit, 1),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("path", list(PATHS))
def test_each_path_stays_finite_and_close_to_float32(path, precision):
    run, amplification = PATHS[path]
    assert_close_to_float32(run, precision, amplification)


# ------------------------------------------------------------------ the float32 runs against float64
class ExactlyGuided:
    """eps-bar = eps*(x_t) + g (eps*(x_t | y) - eps*(x_t)), in float64 from the mixture's exact
    predictors and without the guidance wrappers: classifier-free guidance with g = 1 + w (seed
    002; with ``rescale`` phi, Lin et al. 2024 Sec. 3.4 on x_0: x0 phi std(x0_c) / std(x0) +
    (1 - phi) x0), and Algorithm 2 with the exact classifier with g = s, since
    grad log p(y | x_t) = -(eps*(x_t | y) - eps*(x_t)) / sigma_t."""

    def __init__(self, gain, rescale=0.0):
        self.net, self.gain, self.rescale = CLASSES.network(SCHEDULE), gain, rescale

    def __call__(self, x, t, y):
        eps_c, eps_u = self.net(x, t, y), self.net(x, t)
        eps = eps_u + self.gain * (eps_c - eps_u)
        if self.rescale:
            alpha, sigma = (v(torch.as_tensor(t, dtype=torch.float64)).reshape(-1, 1)
                            for v in (SCHEDULE.alpha, SCHEDULE.sigma))
            x0, x0_c = (x - sigma * eps) / alpha, (x - sigma * eps_c) / alpha
            x0 = self.rescale * x0 * x0_c.std(1, keepdim=True) / x0.std(1, keepdim=True) + (1 - self.rescale) * x0
            eps = (x - alpha * x0) / sigma
        return eps


def exactly_guided(sampler, gain, **options):
    return lambda: diffkit.sample(Denoiser(ExactlyGuided(gain, **options), SCHEDULE), NOISE.double(), sampler, STEPS,
                                  cond={"y": LABELS}, progress=False)


def exact_algorithm_1():
    """Dhariwal & Nichol 2021, Algorithm 1 in float64 with the exact classifier's gradient
    (eps*(x_t) - eps*(x_t | y)) / sigma_t: x_s ~ N(mu + s Sigma grad, Sigma), the DDPM step's
    (mu, Sigma) at the exact x_0, no noise on the last step; the noise as classifier_guided_ddpm
    draws it (float32 normals from seed 1)."""
    from diffkit import diffusion
    net, generator, x = CLASSES.network(SCHEDULE), torch.Generator().manual_seed(1), NOISE.double()
    for t, s in zip(GRID[:-1], GRID[1:]):
        alpha, sigma = SCHEDULE.alpha(t.double()), SCHEDULE.sigma(t.double())
        eps_c, eps_u = net(x, t, LABELS), net(x, t)
        mean, log_var = diffusion.p_mean_variance(SCHEDULE, x, (x - sigma * eps_u) / alpha, t, s, "fixed_small", None)
        x = mean + 2.0 * log_var.exp() * (eps_u - eps_c) / sigma
        if s >= 0:
            x = x + (0.5 * log_var).exp() * torch.randn(x.shape, generator=generator).double()
    return x


class ExactlyReconstructed:
    """Reconstruction guidance (Ho et al. 2022, Sec. 3.1) in float64 without the wrapper:
    x0-tilde = x0*(x_t) - (w alpha_t / 2) m grad_{x_t} ||(1 - m)(x_known - x0*(x_t))||^2, returned as
    eps = (x_t - alpha_t x0-tilde) / sigma_t, with x0* = (x_t - sigma_t eps*) / alpha_t exact."""

    def __init__(self, weight):
        self.net, self.weight = GAUSS.network(SCHEDULE), weight

    def __call__(self, x, t):
        alpha, sigma = (v(torch.as_tensor(t, dtype=torch.float64)).reshape(-1, 1)
                        for v in (SCHEDULE.alpha, SCHEDULE.sigma))
        mask, known = MASK.double(), KNOWN.double()
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            x0 = (x_t - sigma * self.net(x_t, t)) / alpha
            (grad,) = torch.autograd.grad(((1 - mask) * (known - x0)).pow(2).sum(), x_t)
        x0 = x0.detach() - 0.5 * self.weight * alpha * mask * grad
        return (x - alpha * x0) / sigma


# the float64 result each path's float32 run is held to: for the guided paths the formulas above,
# which share no code with the wrappers; for the others the path itself run in float64
FLOAT64 = {"classifier-free w=2, ddim": exactly_guided("ddim", 1 + W),
           "classifier-free w=2 rescale 0.7, dpm-solver++-2m": exactly_guided("dpm-solver++-2m", 1 + W, rescale=0.7),
           "classifier guidance s=2 (Alg. 2), ddim": exactly_guided("ddim", 2.0),
           "classifier guidance s=2 (Alg. 1), ddpm": exact_algorithm_1,
           "reconstruction guidance w=2, ddim": lambda: diffkit.sample(Denoiser(ExactlyReconstructed(2.0), SCHEDULE),
                                                                       NOISE.double(), "ddim", STEPS, progress=False)}
FLOAT32_BOUND = 16 * 2.0 ** -24  # 16 u_fp32 = 2^-12 u_bf16; the module docstring says why


def float32_deviation(path):
    """Relative RMS deviation of ``path``'s float32 run from its float64 result."""
    run = PATHS[path][0]
    out = run(lambda net: net)
    exact = FLOAT64[path]() if path in FLOAT64 else run(lambda net: net, torch.float64)
    assert out.dtype == torch.float32 and exact.dtype == torch.float64
    return ((out.double() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize("path", list(PATHS))
def test_each_float32_path_is_the_float64_result(path):
    """The float32 reference of the half-precision columns is itself right to float32 round-off
    (16 u_fp32, the module docstring), so for the guided paths, whose float64 results share no code
    with the wrappers, a bfloat16 rounding in the wrappers' arithmetic (which the half-precision runs
    share with the float32 one) cannot hide: one costs about u_bf16 / (2 sqrt 3) where it acts."""
    assert float32_deviation(path) < FLOAT32_BOUND, f"{float32_deviation(path) / 2.0 ** -24:.3g} u_fp32"


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


@pytest.mark.parametrize("name,bound", [("cfg", 10), ("classifier", 8), ("algorithm-1", 8)])
def test_cli_sample_mixed_precision_bf16_with_guidance(checkpoints, monkeypatch, name, bound):
    """``diffkit sample --mixed-precision bf16`` with classifier-free guidance (w = 2) or classifier
    guidance (Algorithm 2, or 1 with ddpm): the network runs under autocast, the classifier outside
    it on float32 input, and the samples (float32, before the PNG's clamp and quantisation) are finite
    and within ``bound`` u of the float32 run: the largest error of one model prediction under
    bfloat16 autocast with a margin of about 1.7 for other machines' bfloat16 kernels
    (benchmarks/half_precision_guidance.py, t = 20 ... 999: a tiny random U-Net's call 2.5 - 4.8 u,
    bound 8 u; classifier-free guidance's guided eps of one batched call 5.3 - 5.6 u, bound 10 u:
    the two halves' errors are correlated, so far below the (1 + 2w) = 5 times a call's that
    independent worst cases would give), carried to the samples with a factor about 1 as in the
    module docstring (unit-variance data)."""
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
    assert deviation < bound, f"{name}: {deviation:.3g} u"


@pytest.mark.parametrize("edit,bound", [("inpaint", 8), ("inpaint-reconstruction", 16), ("repaint", 8),
                                        ("sdedit", 8)])
def test_cli_edit_mixed_precision_bf16(checkpoints, monkeypatch, edit, bound):
    """``diffkit edit --mixed-precision bf16``: the network runs under autocast (reconstruction
    guidance's gradient through it too), and the edited images (float32, before the clamp) are
    finite and within ``bound`` u of the float32 run: 8 u, a call's error with its margin, as above;
    16 u with reconstruction guidance (w = 2), whose gradient is back-propagated through the network
    in bfloat16: on this U-Net its correction is 0.12 - 1.55 times x0-hat's size and carries 7.8 -
    9.6 u against the forward x0-hat's 0.3 - 3.4 u (benchmarks/half_precision_guidance.py,
    t = 20 ... 999), so 2 x 8 u."""
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
    assert deviation < bound, f"{edit}: {deviation:.3g} u"


@pytest.fixture(scope="module")
def series_checkpoint(tmp_path_factory):
    """(checkpoint, rows, column min, column max) of tests/test_cli_forecast.py's tiny series run."""
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
    default; ddpm, 4 steps): the series network runs under autocast, the forecast differs from the
    float32 one (autocast reached it) and lies within the bound of what it rounds. The network's
    output eps carries its bfloat16 error, at most 8 u of its largest value E (as the U-Nets' above;
    2 with reconstruction guidance, whose gradient runs through it too); a DDPM step t -> s takes x_0
    = (x_t - sigma_t eps) / alpha_t with the weight coef_x0 (DDPM eq. 7), and the later steps of a
    network this near zero (E < 0.05: 10 training steps) carry x_s to the output scaled by
    1 / alpha_s (x_s' = alpha_s' / alpha_s x_s when eps = 0). So, in the model's [-1, 1] units (the
    file's range over 2): |difference| <= 2 * 8 u * E * sum over steps of
    coef_x0 sigma_t / (alpha_t alpha_s)."""
    from diffkit import diffusion
    from diffkit.cli import main
    from diffkit.loading import load_denoiser
    from test_cli_forecast import read_out, write_rows
    checkpoint, values, low, high = series_checkpoint
    denoiser = load_denoiser(checkpoint)
    network_class = type(denoiser.model)
    autocast, largest = [], []

    def forward(self, x, *args, _real=network_class.forward, **kwargs):
        autocast.append(torch.is_autocast_enabled("cpu"))
        out = _real(self, x, *args, **kwargs)
        largest.append(out.detach().abs().max().item())
        return out
    monkeypatch.setattr(network_class, "forward", forward)
    history = write_rows(tmp_path / "history.csv", values[62:68])
    forecasts = {}
    for precision in ("no", "bf16"):
        autocast.clear(), largest.clear()
        assert main(["edit", "--checkpoint", str(checkpoint), "--series", str(history), "--horizon", "2", "--num", "3",
                     "--steps", "4", "--mixed-precision", precision, "--out", str(tmp_path / f"{precision}.csv"),
                     "--no-progress"]) == 0
        assert autocast and set(autocast) == {precision == "bf16"}
        forecasts[precision] = read_out(tmp_path / f"{precision}.csv")[1][:, 1:]
        if precision == "no":
            eps_max = max(largest)
    assert eps_max < 0.05
    grid = sampler_grid(denoiser, get_sampler("ddpm"), 4).double()
    schedule = denoiser.schedule
    factor = 0.0
    for t, s in zip(grid[:-1], grid[1:]):
        coef_x0 = diffusion.posterior_coefficients(schedule, t, s)[0]
        factor += (coef_x0 * schedule.sigma(t) / schedule.alpha(t) / (schedule.alpha(s) if s >= 0 else 1.0)).item()
    bound = 2 * 8 * 2.0 ** -8 * eps_max * factor
    difference = 2 * np.abs(forecasts["bf16"] - forecasts["no"]) / (high - low)  # model units
    assert np.isfinite(forecasts["bf16"]).all() and not np.array_equal(forecasts["bf16"], forecasts["no"])
    assert difference.max() < bound, (difference.max(), bound)


@pytest.mark.parametrize("what", ["images", "interpolate", "series"])
def test_cli_edit_fp16_off_cuda_is_one_line_before_any_folder(checkpoints, series_checkpoint, tmp_path, capsys, what):
    """``diffkit edit --mixed-precision fp16`` on the CPU: the one-line error of
    ``diffkit.denoiser.autocast`` (exit 2), and no output folder made (``--out`` in a new folder)."""
    from PIL import Image

    from diffkit.cli import main
    from test_cli_forecast import write_rows
    out = tmp_path / "new" / ("forecast.csv" if what == "series" else "edited")
    if what == "series":
        history = write_rows(tmp_path / "history.csv", series_checkpoint[1][62:68])
        args = ["--checkpoint", series_checkpoint[0], "--series", history, "--horizon", 2]
    else:
        pngs = tmp_path / "pngs"
        pngs.mkdir()
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(pngs / f"in_{i}.png")
        args = ["--checkpoint", checkpoints["uncond"], "--images", pngs,
                *(["--interpolate", 3] if what == "interpolate" else [])]
    assert main([str(a) for a in ("edit", *args, "--mixed-precision", "fp16", "--device", "cpu", "--out", out,
                                  "--no-progress")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fp16" in err and "CUDA" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists()
