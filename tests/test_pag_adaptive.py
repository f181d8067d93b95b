"""diffusers' adaptive perturbed-attention guidance scale (``pag_adaptive_scale``; PAGMixin._get_pag_scale):
s_t = max(s - a (1000 - t'), 0), t' = 1000 t / T. Checked against numbers worked out by hand, against diffusers'
own ``_get_pag_scale``, against separately computed passes, and the off path bit for bit."""
import pytest
import torch

from diffkit import Denoiser, NoiseSchedule
from diffkit.errors import DiffkitError
from diffkit.guidance import ClassifierFreeGuidance, PerturbedAttentionGuidance, adaptive_pag_scale
from test_cli_errors import one_line_error, run_cli
from test_perturbed_attention import SCHEDULE, conditional_passes, noisy, separate, unet

S, A = 3.0, 0.005  # s reaches 0 at t' = 1000 - S / A = 400


def test_the_scale_is_the_formula_worked_out_by_hand_on_1000_and_on_50_timesteps():
    # T = 1000: t' = t. 3 - 0.005 * (1000 - t): t = 999 -> 2.995, 800 -> 2, 500 -> 0.5, 400 -> 0, 0 -> -2 -> 0
    got = adaptive_pag_scale(S, A, torch.tensor([999.0, 800.0, 500.0, 400.0, 0.0]), 1000)
    torch.testing.assert_close(got, torch.tensor([2.995, 2.0, 0.5, 0.0, 0.0], dtype=torch.float64))
    # T = 50: t' = 20 t. t = 49 -> t' = 980 -> 2.9; 30 -> 600 -> 1; 25 -> 500 -> 0.5; 10 -> 200 -> -1 -> 0
    got = adaptive_pag_scale(S, A, torch.tensor([49.0, 30.0, 25.0, 10.0]), 50)
    torch.testing.assert_close(got, torch.tensor([2.9, 1.0, 0.5, 0.0], dtype=torch.float64))
    assert adaptive_pag_scale(S, 0.0, torch.tensor([0.0, 999.0]), 1000).tolist() == [S, S]


def test_the_scale_is_diffusers_get_pag_scale_bit_for_bit_on_1000_timesteps():
    pag_utils = pytest.importorskip("diffusers.pipelines.pag.pag_utils")
    for s, a in ((S, A), (2.5, 0.0031), (1.0, 0.0), (0.7, 1e-4)):
        mixin = pag_utils.PAGMixin.__new__(pag_utils.PAGMixin)
        mixin._pag_scale, mixin._pag_adaptive_scale, mixin.pag_applied_layers = s, a, ["mid"]
        times = [*range(1000), 999.5, 437.25, 0.125]  # integer timesteps, and a continuous scheduler's
        want = torch.tensor([float(mixin._get_pag_scale(t)) for t in times], dtype=torch.float64)
        assert torch.equal(adaptive_pag_scale(s, a, torch.tensor(times, dtype=torch.float64), 1000), want), (s, a)


def test_guided_calls_use_s_t_per_sample_and_the_interval_still_applies():
    """T = 50, t = 49, 30, 10: s_t = 2.9, 1, 0 (hand numbers above); with interval (20, 40) only the middle keeps
    its s_t. eps = eps + s_t (eps - eps-hat) from separately computed passes."""
    net = unet()
    schedule = NoiseSchedule.linear(50)
    den = Denoiser(net, schedule)
    x, t = noisy(), torch.tensor([49.0, 30.0, 10.0])
    with torch.no_grad():
        plain, hat = separate(den, net, x, t)
        pred = PerturbedAttentionGuidance(den, S, adaptive_scale=A)(x, t)
        inside = PerturbedAttentionGuidance(den, S, interval=(20, 40), adaptive_scale=A)(x, t)
    for got, s_t in ((pred, [2.9, 1.0, 0.0]), (inside, [0.0, 1.0, 0.0])):
        s_t = torch.tensor(s_t)[:, None, None, None]
        torch.testing.assert_close(got.eps, plain.eps + s_t * (plain.eps - hat.eps), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.x0, plain.x0 + s_t * (plain.x0 - hat.x0), rtol=1e-4, atol=1e-4)


def test_with_cfg_the_adaptive_scale_is_diffusers_sum_with_its_s_t():
    net, calls, den, x, t, y, cond, hat, null = conditional_passes()  # t = 50, 400, 800 on T = 1000
    w = 1.5
    with torch.no_grad():
        pred = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, null_class=3), S, network=net,
                                          adaptive_scale=A)(x, t, y=y)
    assert calls == [9]  # one 3B call: t = 800 still has s_t = 2
    s_t = torch.tensor([0.0, 0.0, 2.0])[:, None, None, None]
    want = null.eps + (1 + w) * (cond.eps - null.eps) + s_t * (cond.eps - hat.eps)
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-5)


def test_where_s_t_reaches_zero_the_call_is_the_plain_one_bit_for_bit_without_a_perturbed_pass():
    """t <= 400 on T = 1000 (S = 3, A = 0.005): s_t = 0, so the wrapped denoiser's own call (batch B alone,
    2B with classifier-free guidance); diffusers still runs its 3B batch there and adds 0 (s_t) times the
    difference, which is the same sum."""
    net = unet(num_classes=3)
    calls = []
    den = Denoiser(net, SCHEDULE)
    cfg = ClassifierFreeGuidance(den, 2.0)
    x, y, t = noisy(), torch.tensor([0, 1, 2]), torch.tensor([400.0, 250.0, 0.0])
    with torch.no_grad():
        plain, guided, one = den(x, t, y=y), cfg(x, t, y=y), cfg(x[:1], 400.0, y=y[:1])
        hook = net.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
        assert torch.equal(PerturbedAttentionGuidance(den, S, adaptive_scale=A)(x, t, y=y).eps, plain.eps)
        assert torch.equal(PerturbedAttentionGuidance(cfg, S, adaptive_scale=A)(x, t, y=y).eps, guided.eps)
        assert torch.equal(PerturbedAttentionGuidance(cfg, S, adaptive_scale=A)(x[:1], 400.0, y=y[:1]).x0,
                           one.x0)  # a scalar t
        PerturbedAttentionGuidance(cfg, S, adaptive_scale=A)(x[:1], 401.0, y=y[:1])  # just above: s_t = 0.005
        hook.remove()
    assert calls == [3, 6, 2, 3]


def test_adaptive_scale_zero_is_the_constant_scale_bit_for_bit():
    net = unet()
    den = Denoiser(net, SCHEDULE)
    x, t = noisy(), torch.tensor([50.0, 400.0, 800.0])
    with torch.no_grad():
        want = PerturbedAttentionGuidance(den, S, interval=(0, 500))(x, t)
        got = PerturbedAttentionGuidance(den, S, interval=(0, 500), adaptive_scale=0.0)(x, t)
    assert torch.equal(got.eps, want.eps) and torch.equal(got.x0, want.x0)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1", None])
def test_a_bad_adaptive_scale_is_a_one_line_error(bad):
    den = Denoiser(unet(), SCHEDULE)
    with pytest.raises(DiffkitError, match="adaptive scale") as info:
        PerturbedAttentionGuidance(den, S, adaptive_scale=bad)
    assert "\n" not in str(info.value)


def test_the_flag_reaches_the_guidance_and_its_mistakes_are_one_line_errors_before_any_output(
        tiny_checkpoint, tmp_path, capsys):
    from diffkit.cli import build_parser
    from diffkit.commands.sample import GuidanceRequest
    common = ["sample", "--checkpoint", tiny_checkpoint, "--steps", 3, "--num", 4, "--no-progress",
              "--device", "cpu", "--batch-size", 4]
    assert run_cli(capsys, *common, "--out", tmp_path / "plain.png", "--pag-scale", 3)[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "zero.png", "--pag-scale", 3,
                   "--pag-adaptive-scale", 0)[0] == 0
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "zero.png").read_bytes()
    code, out, _ = run_cli(capsys, *common, "--out", tmp_path / "a.png", "--pag-scale", 3, "--pag-adaptive-scale",
                           0.004, "--pag-interval", 0, 90)
    assert code == 0 and "s=3 at mid for 0 <= t <= 90, adaptive a=0.004" in out
    args = build_parser().parse_args([str(a) for a in [*common, "--pag-scale", 3, "--pag-adaptive-scale", 0.004]])
    guide = GuidanceRequest.from_args(args, "ddim").perturbed(Denoiser(unet(), SCHEDULE))
    assert guide.adaptive_scale == 0.004 and guide.scale == 3.0

    bad = tmp_path / "new" / "s.png"
    common = [*common[:-4], "--out", bad]
    assert "--pag-adaptive-scale needs --pag-scale" in one_line_error(capsys, *common, "--pag-adaptive-scale", 0.01)
    for value, message in (("-0.5", "--pag-adaptive-scale=-0.5 is out of range; allowed: a finite number in [0.0"),
                           ("nan", "--pag-adaptive-scale=nan is not allowed"),
                           ("inf", "--pag-adaptive-scale=inf is not allowed")):
        assert message in one_line_error(capsys, *common, "--pag-scale", 2, "--pag-adaptive-scale", value)
    with pytest.raises(SystemExit) as exc:  # argparse's type=float: one line, exit 2
        run_cli(capsys, *common, "--pag-scale", 2, "--pag-adaptive-scale", "abc")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.endswith("argument --pag-adaptive-scale: invalid float value: 'abc'"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "new").exists()
