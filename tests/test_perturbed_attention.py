"""Perturbed-Attention Guidance (Ahn et al. 2024, arXiv:2403.17377; diffusers' StableDiffusionPAGPipeline): the
perturbed self-attention checked against out_proj(v_proj(x)) written out here, the guided prediction
against eps + s (eps - eps-hat) (and eps_c + w (eps_c - eps_u) + s (eps_c - eps-hat_c) with classifier-free
guidance) from separately computed passes, and the off path bit for bit."""
import pytest
import torch
import torch.nn.functional as F

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.errors import DiffkitError
from diffkit.guidance import ClassifierFreeGuidance, PerturbedAttentionGuidance
from diffkit.models.layers import AttentionBlock, SpatialTransformer
from diffkit.models.unet import UNet, UNetConfig, self_attention_layer_names
from test_cli_errors import one_line_error, run_cli

SCHEDULE = NoiseSchedule.linear(1000)


def redrawn(module, seed=0):
    """``module`` in eval mode with every zero-initialised weight re-drawn (else proj = 0 hides the attention)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(std=0.2)
    return module.eval()


def unet(num_classes=None, context_dim=None, attn=(1,), heads=1, seed=0):
    torch.manual_seed(seed)
    return redrawn(UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=list(attn), num_res_blocks=1, dropout=0.0,
                                   img_size=8, in_channels=1, num_classes=num_classes, context_dim=context_dim,
                                   num_heads=heads, scale_shift_norm=True)), seed)


def noisy(n=3, seed=1):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def tokens(h):
    return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1])


def untokens(tok, like):
    b, c, hh, ww = like.shape
    return tok.reshape(b, hh, ww, c).permute(0, 3, 1, 2)


# ------------------------------------------------------------------ the perturbed layer
@pytest.mark.parametrize("heads", [1, 2])
def test_a_perturbed_attention_block_is_the_residual_plus_out_proj_of_v(heads):
    """AttentionBlock with A = I: x + proj(v), v = the value third of qkv(GroupNorm(x)) (PAG's A = I)."""
    torch.manual_seed(0)
    block = redrawn(AttentionBlock(8, heads))
    x = torch.randn(2, 8, 4, 4)
    c = 8
    v = F.linear(tokens(block.norm(x)), block.qkv.weight[2 * c:], block.qkv.bias[2 * c:])
    want = x + untokens(F.linear(v, block.proj.weight, block.proj.bias), x)
    with torch.no_grad():
        block.identity_attention = True
        got = block(x)
        block.identity_attention = torch.tensor([False, True])  # per sample: row 0 plain, row 1 perturbed
        mixed = block(x)
        del block.identity_attention
        plain = block(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, want, atol=1e-3)  # the attention map matters here
    torch.testing.assert_close(mixed[1], want[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(mixed[0], plain[0])


def test_a_spatial_transformer_perturbs_its_self_attention_and_keeps_its_cross_attention():
    """tokens h = proj_in(GN(x)); h += self_out(v(LN h)) [A = I]; h += cross-attention(LN h, context) with its
    softmax; h += GEGLU feed-forward; x + proj_out(h): written out by hand."""
    torch.manual_seed(0)
    block = redrawn(SpatialTransformer(8, context_dim=5, heads=1))
    x, context = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 5)
    c = 8
    h = block.proj_in(tokens(block.norm(x)))
    h = h + block.self_out(F.linear(block.norm_self(h), block.qkv.weight[2 * c:]))  # qkv has no bias
    q = block.cross.to_q(block.norm_cross(h))
    k, v = block.cross.to_kv(context).chunk(2, dim=-1)
    h = h + block.cross.to_out(torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1) @ v)
    value, gate = block.ff_in(block.norm_ff(h)).chunk(2, dim=-1)
    h = h + block.ff_out(value * F.gelu(gate))
    want = x + untokens(block.proj_out(h), x)
    with torch.no_grad():
        block.identity_attention = True
        got = block(x, None, context)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ layer names, the context, the off path
def test_layer_names_follow_the_levels_of_attn():
    net = UNet(UNetConfig(channel=8, channel_mult=[1, 2, 2], attn=[0, 2], num_res_blocks=2, img_size=8,
                          in_channels=1))
    assert self_attention_layer_names([0, 2], 3) == ["down.0", "down.2", "mid", "up.2", "up.0"]
    layers = net.self_attention_layers()
    assert list(layers) == ["down.0", "down.2", "mid", "up.2", "up.0"]
    # num_res_blocks attention blocks per level on the way down, num_res_blocks + 1 on the way up, one in the middle
    assert [len(v) for v in layers.values()] == [2, 2, 1, 3, 3]
    assert layers["mid"] == [net.middle[1]]
    assert all(b is layer for b, layer in zip(layers["down.0"], (net.down[0][1], net.down[1][1])))
    assert all(b is chain[1] for b, chain in zip(layers["up.0"], list(net.up)[-3:]))
    with net.perturbed_self_attention(["up.2"]):
        perturbed = [m for m in net.modules() if getattr(m, "identity_attention", None) is True]
    assert perturbed == layers["up.2"]
    assert all(getattr(m, "identity_attention", None) is None for m in net.modules())


def test_the_off_path_and_an_all_false_mask_are_bit_identical_and_the_context_restores():
    net = unet()
    x, t = noisy(), torch.tensor([10.0, 500.0, 900.0])
    with torch.no_grad():
        before = net(x, t)
        with net.perturbed_self_attention(["mid", "down.1", "up.1"], torch.zeros(3, dtype=torch.bool)):
            none_perturbed = net(x, t)
        with net.perturbed_self_attention(["mid"]):
            perturbed = net(x, t)
        after = net(x, t)
    assert torch.equal(before, none_perturbed) and torch.equal(before, after)
    assert (perturbed - before).abs().amax() > 1e-3
    assert all("identity_attention" not in m.__dict__ for m in net.modules())


def test_one_batched_forward_with_a_mask_equals_separate_forwards():
    net = unet()
    x, t = noisy(2), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        plain = net(x, t)
        with net.perturbed_self_attention(["mid", "up.1"]):
            perturbed = net(x, t)
        with net.perturbed_self_attention(["mid", "up.1"], torch.tensor([False, False, True, True])):
            both = net(torch.cat([x, x]), torch.cat([t, t]))
    torch.testing.assert_close(both, torch.cat([plain, perturbed]), rtol=1e-5, atol=1e-5)


def test_bad_layer_names_and_masks_are_one_line_errors():
    net = unet()
    with pytest.raises(DiffkitError, match=r"unknown self-attention layer 'middle'; .* down\.1, mid, up\.1"):
        with net.perturbed_self_attention(["middle"]):
            pass
    with pytest.raises(DiffkitError, match=r"no self-attention at down\.0 .*down\.1, mid, up\.1"):
        with net.perturbed_self_attention("down.0"):
            pass
    with pytest.raises(DiffkitError, match=r"unknown self-attention layer 'up\.2'"):
        with net.perturbed_self_attention("up.2"):
            pass
    with pytest.raises(DiffkitError, match="mask of shape"):
        with torch.no_grad(), net.perturbed_self_attention("mid", torch.tensor([True])):
            net(noisy(3), 5.0)


# ------------------------------------------------------------------ the guidance
def separate(den, net, x, t, layers=("mid",), **cond):
    """(eps, x0) of the plain and of the perturbed network, each its own call."""
    plain = den(x, t, **cond)
    with net.perturbed_self_attention(layers):
        hat = den(x, t, **cond)
    return plain, hat


def test_pag_is_eps_plus_s_times_eps_minus_eps_hat():
    net = unet()
    den = Denoiser(net, SCHEDULE)
    x, t, s = noisy(), torch.tensor([50.0, 400.0, 800.0]), 2.5
    with torch.no_grad():
        plain, hat = separate(den, net, x, t, ("mid", "down.1"))
        den.reset_nfe()
        pred = PerturbedAttentionGuidance(den, s, ["mid", "down.1"])(x, t)
    assert den.nfe == 1  # one call of batch 2B
    torch.testing.assert_close(pred.eps, plain.eps + s * (plain.eps - hat.eps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.x0, plain.x0 + s * (plain.x0 - hat.x0), rtol=1e-4, atol=1e-4)  # x0 ~ eps / alpha
    a, sig = SCHEDULE.alpha(t.double()), SCHEDULE.sigma(t.double())  # a consistent pair
    torch.testing.assert_close(x.double(), a[:, None, None, None] * pred.x0.double()
                               + sig[:, None, None, None] * pred.eps.double(), rtol=1e-4, atol=1e-4)


def conditional_passes():
    """A 3-class U-Net (null class 3) whose denoiser records each call's batch size, three noisy images at
    t = 50, 400, 800 with labels 0, 2, 1, and their conditional, perturbed-conditional and null passes
    computed one by one (the record then cleared)."""
    net = unet(num_classes=3)
    calls = []
    den = Denoiser(lambda x, t, **c: calls.append(x.shape[0]) or net(x, t, **c), SCHEDULE)
    x, t, y = noisy(), torch.tensor([50.0, 400.0, 800.0]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        cond, hat = separate(den, net, x, t, y=y)
        null = den(x, t, y=torch.full_like(y, 3))
    calls.clear()
    return net, calls, den, x, t, y, cond, hat, null


def test_pag_with_cfg_is_the_diffusers_sum_in_one_call_of_3b():
    net, calls, den, x, t, y, cond, hat, null = conditional_passes()
    w, s = 1.5, 3.0
    with torch.no_grad():
        guided = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, null_class=3), s, network=net)
        pred = guided(x, t, y=y)
    assert calls == [9]
    want = null.eps + (1 + w) * (cond.eps - null.eps) + s * (cond.eps - hat.eps)  # diffusers' guidance_scale 1 + w
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.x0, cond.x0 + w * (cond.x0 - null.x0) + s * (cond.x0 - hat.x0),
                               rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # w = 0: PAG on the conditional model, a batch of 2B
        calls.clear()
        pred0 = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, 0.0, null_class=3), s, network=net)(x, t, y=y)
    assert calls == [6]
    torch.testing.assert_close(pred0.eps, cond.eps + s * (cond.eps - hat.eps), rtol=1e-5, atol=1e-5)


def test_pag_with_text_cfg_perturbs_the_prompt_pass_of_a_cross_attention_unet():
    """A text-conditional U-Net (spatial transformers; CFG's null condition the empty prompt's context): the
    perturbed pass has the prompt's context, and its cross-attention is left as it is."""
    net = unet(context_dim=4)
    den = Denoiser(net, SCHEDULE)
    g = torch.Generator().manual_seed(2)
    x, t, w, s = noisy(), torch.tensor([50.0, 400.0, 800.0]), 1.0, 2.0
    context, null = torch.randn(3, 2, 4, generator=g), torch.randn(1, 2, 4, generator=g)
    with torch.no_grad():
        cond, hat = separate(den, net, x, t, ("mid", "up.1"), context=context)
        uncond = den(x, t, context=null.expand(3, 2, 4))
        pred = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, null_context=null), s, "mid,up.1")(
            x, t, context=context)
    want = cond.eps + w * (cond.eps - uncond.eps) + s * (cond.eps - hat.eps)
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-5)


def test_pag_scale_zero_and_outside_its_interval_is_the_wrapped_denoiser_bit_for_bit():
    net = unet(num_classes=3)
    calls = []
    den = Denoiser(net, SCHEDULE)
    cfg = ClassifierFreeGuidance(den, 2.0)
    x, y = noisy(), torch.tensor([0, 1, 2])
    t = torch.tensor([50.0, 400.0, 800.0])
    with torch.no_grad():
        hook = net.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
        assert torch.equal(PerturbedAttentionGuidance(cfg, 0.0)(x, t, y=y).eps, cfg(x, t, y=y).eps)
        assert torch.equal(PerturbedAttentionGuidance(den, 0.0)(x, t, y=y).eps, den(x, t, y=y).eps)
        assert torch.equal(PerturbedAttentionGuidance(cfg, 3.0, interval=(900, 999))(x, t, y=y).eps,
                           cfg(x, t, y=y).eps)
        hook.remove()
        assert calls == [6, 6, 3, 3, 6, 6]  # s = 0 (or no t in the interval) costs nothing: no perturbed pass
        half = PerturbedAttentionGuidance(den, 3.0, interval=(0, 450))(x, t, y=y)
        full = PerturbedAttentionGuidance(den, 3.0)(x, t, y=y)
        plain = den(x, t, y=y)
    torch.testing.assert_close(half.eps[:2], full.eps[:2])
    torch.testing.assert_close(half.eps[2], plain.eps[2])


def test_pag_samples_through_diffkit_sample_and_refuses_networks_without_self_attention():
    net = unet()
    den = Denoiser(net, SCHEDULE)
    noise = noisy(2)
    with torch.no_grad():
        out0 = diffkit.sample(den, noise, sampler="dpm-solver++-2m", steps=4)
        out = diffkit.sample(PerturbedAttentionGuidance(den, 0.0), noise, sampler="dpm-solver++-2m", steps=4)
        guided = diffkit.sample(PerturbedAttentionGuidance(den, 2.0), noise, sampler="heun", steps=3)
    assert torch.equal(out0, out) and torch.isfinite(guided).all()
    with pytest.raises(DiffkitError, match="self-attention of a diffkit U-Net"):
        PerturbedAttentionGuidance(Denoiser(lambda x, t: x, SCHEDULE), 1.0)
    with pytest.raises(DiffkitError, match="scale"):
        PerturbedAttentionGuidance(den, -1.0)
    with pytest.raises(DiffkitError, match="no self-attention at down.0"):
        PerturbedAttentionGuidance(den, 1.0, ["down.0"])


def test_pag_with_cfg_rescale_rescales_the_sum_against_the_conditional_pass():
    """diffusers' PAG pipeline: noise_pred = the CFG + PAG sum, then rescale_noise_cfg(noise_pred, noise_pred_text)
    (Lin et al. 2024, Sec. 3.4): phi * sum * std(eps_c) / std(sum) + (1 - phi) * sum, per sample, in eps space."""
    net = unet(num_classes=3)
    den = Denoiser(net, SCHEDULE)
    x, t, y, w, s, phi = noisy(), torch.tensor([50.0, 400.0, 800.0]), torch.tensor([0, 2, 1]), 2.0, 3.0, 0.7
    with torch.no_grad():
        cond, hat = separate(den, net, x, t, y=y)
        null = den(x, t, y=torch.full_like(y, 3))
        cfg = ClassifierFreeGuidance(den, w, rescale=phi, rescale_space="eps", null_class=3)
        pred = PerturbedAttentionGuidance(cfg, s)(x, t, y=y)
    total = cond.eps + w * (cond.eps - null.eps) + s * (cond.eps - hat.eps)
    std = lambda e: e.flatten(1).std(dim=1)[:, None, None, None]  # noqa: E731
    want = phi * total * std(cond.eps) / std(total) + (1 - phi) * total
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-5)


def test_pag_with_a_cfg_interval_guides_w_per_sample_and_keeps_s_everywhere():
    """CFG's interval sets w = 0 for the samples outside it, PAG's s stays (the 3B call); with no sample inside
    CFG's interval it is PAG alone on the conditional pass (a 2B call); a scalar t takes the same paths."""
    net, calls, den, x, t, y, cond, hat, null = conditional_passes()
    w, s = 1.5, 2.0
    with torch.no_grad():
        pred = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, interval=(0, 500), null_class=3), s,
                                          network=net)(x, t, y=y)
        none = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, interval=(900, 950), null_class=3), s,
                                          network=net)(x, t, y=y)
        scalar = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, w, null_class=3), s, network=net)(
            x[:1], 50.0, y=y[:1])
    assert calls == [9, 6, 3]
    inside = torch.tensor([1.0, 1.0, 0.0])[:, None, None, None]
    want = cond.eps + w * inside * (cond.eps - null.eps) + s * (cond.eps - hat.eps)
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(none.eps, cond.eps + s * (cond.eps - hat.eps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scalar.eps, want[:1], rtol=1e-5, atol=1e-5)


def test_pag_returns_the_conditional_pass_s_learned_variance():
    """A learned variance is not guided (as classifier-free guidance's): the unperturbed conditional pass's."""
    torch.manual_seed(0)
    net = redrawn(UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8,
                                  in_channels=1, num_classes=3, learned_variance=True)))
    den = Denoiser(net, SCHEDULE, learned_variance=True)
    x, t, y = noisy(), torch.tensor([50.0, 400.0, 800.0]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        cond, hat = separate(den, net, x, t, y=y)
        alone = PerturbedAttentionGuidance(den, 2.0)(x, t, y=y)
        both = PerturbedAttentionGuidance(ClassifierFreeGuidance(den, 1.0), 2.0)(x, t, y=y)
    assert not torch.allclose(cond.var_values, hat.var_values, atol=1e-4)  # the perturbed pass's differs
    torch.testing.assert_close(alone.var_values, cond.var_values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both.var_values, cond.var_values, rtol=1e-5, atol=1e-5)


def test_a_forward_that_raises_leaves_no_perturbed_block_behind():
    """The context restores the blocks when the forward inside it raises (a bad input mid-sampling), so the next
    plain call is the unperturbed network, bit for bit."""
    net = unet(num_classes=3)
    den = Denoiser(net, SCHEDULE)
    x, t, y = noisy(), torch.tensor([50.0, 400.0, 800.0]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        before = net(x, t, y=y)
        with pytest.raises(DiffkitError, match="spatial size"):
            PerturbedAttentionGuidance(ClassifierFreeGuidance(den, 1.0), 2.0, ["mid", "up.1"])(x[..., :7, :7], t, y=y)
        with pytest.raises(DiffkitError, match="spatial size"):
            with net.perturbed_self_attention(["mid", "down.1"], True):
                net(x[..., :7, :7], t, y=y)
        after = net(x, t, y=y)
    assert all("identity_attention" not in m.__dict__ for m in net.modules())
    assert torch.equal(before, after)


def test_pag_over_another_pag_or_over_a_wrapped_cfg_is_refused_when_built():
    """Each PAG owns the blocks' perturbation for its call: a second one under it would overwrite it (overlapping
    layers: the outer guidance silently unperturbed) or hand the blocks a mask of the wrong batch; and a
    ClassifierFreeGuidance under another wrapper doubles the batch under the mask. Both refused at construction."""
    from diffkit.denoiser import ThresholdedDenoiser
    net = unet(num_classes=3)
    den = Denoiser(net, SCHEDULE)
    with pytest.raises(DiffkitError, match="over another PerturbedAttentionGuidance"):
        PerturbedAttentionGuidance(PerturbedAttentionGuidance(den, 1.0), 2.0)
    with pytest.raises(DiffkitError, match="directly over ClassifierFreeGuidance"):
        PerturbedAttentionGuidance(ThresholdedDenoiser(ClassifierFreeGuidance(den, 1.0), "clip"), 2.0)
    PerturbedAttentionGuidance(ClassifierFreeGuidance(den, 1.0), 2.0)  # directly over it: fine
    ClassifierFreeGuidance(PerturbedAttentionGuidance(den, 1.0), 1.0)  # PAG under CFG (both passes perturbed): fine


# ------------------------------------------------------------------ the command line
def test_sample_with_pag_scale_zero_writes_the_same_png_and_a_scale_runs(tiny_checkpoint, tmp_path, capsys):
    common = ["sample", "--checkpoint", tiny_checkpoint, "--steps", 3, "--num", 4, "--no-progress",
              "--device", "cpu", "--batch-size", 4]
    assert run_cli(capsys, *common, "--out", tmp_path / "plain.png")[0] == 0
    assert run_cli(capsys, *common, "--out", tmp_path / "zero.png", "--pag-scale", 0)[0] == 0
    code, out, _ = run_cli(capsys, *common, "--out", tmp_path / "pag.png", "--pag-scale", 3,
                           "--pag-layers", "mid,up.1", "--pag-interval", 0, 50)
    assert code == 0 and "perturbed-attention guidance s=3 at mid,up.1 for 0 <= t <= 50" in out
    assert (tmp_path / "plain.png").read_bytes() == (tmp_path / "zero.png").read_bytes()
    # (after 2 training steps the zero-initialised attention projections are still ~0, so the guided PNG need not
    # differ at 8 bits: the guidance itself is checked above, on re-drawn weights)


def test_pag_flag_mistakes_are_one_line_errors_before_any_output(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "new" / "s.png"
    common = ["sample", "--checkpoint", tiny_checkpoint, "--steps", 2, "--num", 2, "--out", out, "--no-progress"]
    assert "--pag-scale=-1.0 is out of range" in one_line_error(capsys, *common, "--pag-scale", -1)
    line = one_line_error(capsys, *common, "--pag-scale", 2, "--pag-layers", "middle")
    assert "unknown self-attention layer 'middle'" in line and "mid, or down.L / up.L" in line
    assert "unknown self-attention layer ''" in one_line_error(capsys, *common, "--pag-scale", 2, "--pag-layers", "")
    line = one_line_error(capsys, *common, "--pag-scale", 2, "--pag-layers", "down_blocks.1")
    assert "unknown self-attention layer 'down_blocks.1'" in line and "are a Stable Diffusion folder's" in line
    line = one_line_error(capsys, *common, "--pag-scale", 2, "--pag-layers", "mid,up.7")
    assert "unknown self-attention layer 'up.7'; this checkpoint has down.1, mid, up.1" in line
    line = one_line_error(capsys, *common, "--pag-scale", 2, "--pag-layers", "down.0")
    assert "this checkpoint has no self-attention at down.0" in line and "down.1, mid, up.1" in line
    assert "--pag-layers needs --pag-scale" in one_line_error(capsys, *common, "--pag-layers", "mid")
    assert "--pag-interval needs --pag-scale" in one_line_error(capsys, *common, "--pag-interval", 0, 500)
    assert "--pag-interval=(500.0, 100.0) must be (t_lo, t_hi) with t_lo <= t_hi" in one_line_error(
        capsys, *common, "--pag-scale", 0, "--pag-interval", 500, 100)
    assert "guidance interval=(0.0, 1000000.0) is not allowed" in one_line_error(
        capsys, *common, "--pag-scale", 2, "--pag-interval", 0, 1e6)  # beyond T: checked once loaded
    assert not (tmp_path / "new").exists()


def test_pag_layer_names_of_a_stable_diffusion_folder_and_a_time_series_model(tmp_path, capsys):
    """A Stable Diffusion folder takes diffusers' layer names (tests/test_sd_pag.py), not diffkit's, and a diffkit
    checkpoint not diffusers'; a time-series model has no self-attention to perturb."""
    import json

    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    out = tmp_path / "new" / "s.png"
    assert "pag layer 'down.1' is a diffkit U-Net layer name; a Stable Diffusion folder's UNet takes diffusers'" \
        in one_line_error(capsys, "sample", "--checkpoint", sd, "--pag-scale", 2, "--pag-layers", "mid,down.1",
                          "--out", out, "--prompt", "a")
    from diffkit.commands.sample import GuidanceRequest, sample_stable_diffusion
    with pytest.raises(DiffkitError, match="pag layer 'up.0' is a diffkit U-Net layer name"):
        sample_stable_diffusion(sd, out=out, guidance=GuidanceRequest(pag_scale=2.0, prompts=["a"],
                                                                      pag_layers=["up.0"]))
    cfg = TrainConfig.from_dict({"dataset": "sines", "num_series": 8, "seq_length": 8, "in_channels": 1, "channel": 8,
                                 "channel_mult": [1, 2], "num_res_blocks": 1, "batch_size": 8, "T": 20,
                                 "sample_steps": 4, "max_steps": 1,
                                 "device": "cpu", "save_weight_dir": str(tmp_path / "ckpt"),
                                 "sampled_dir": str(tmp_path / "s")})
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    line = one_line_error(capsys, "sample", "--checkpoint", tmp_path / "ckpt" / "latest.safetensors", "--pag-scale", 2,
                          "--out", out, "--steps", 2)
    assert "--pag-scale perturbs a U-Net's self-attention; this time-series model has none" in line
    assert not (tmp_path / "new").exists()
