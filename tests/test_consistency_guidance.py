"""LCM's w-conditioning (Luo et al. 2023, Sec. 4.2, Alg. 1): the guidance-scale input of the U-Net
against diffusers, the per-example guided teacher step against a hand computation, distillation
with w drawn per example, sampling with w as an input, resume and validation (tiny models)."""
import warnings

import pytest
import torch

import diffkit
from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.config import TrainConfig
from diffkit.consistency import ConsistencyDenoiser, consistency_loss, ddim_teacher_step
from diffkit.denoiser import Denoiser, ThresholdedDenoiser
from diffkit.guidance import ClassifierFreeGuidance, GuidanceScaleInput
from diffkit.loading import load_denoiser
from diffkit.models.layers import TimeEmbedding, guidance_scale_embedding, timestep_embedding
from diffkit.models.unet import UNet, UNetConfig
from diffkit.schedule import NoiseSchedule
from diffkit.training import Trainer

from test_consistency_training import batch_loss_and_uniform_draws
from test_training import TINY, make_cfg, tiny_dataset

RANGE = [2.0, 6.0]


def _w_cfg(tmp_path, teacher, **over):
    return make_cfg(tmp_path, objective="consistency-distillation", teacher=str(teacher), ema_warmup=True,
                    conditional=True, consistency_guidance_range=RANGE, guidance_embedding_dim=8, **over)


@pytest.fixture(scope="module")
def cond_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond_teacher")
    Trainer(TrainConfig.from_dict({**TINY, "max_steps": 2, "conditional": True, "save_weight_dir": str(root)}),
            tiny_dataset(), progress=False).run()
    return root / "latest.safetensors"


@pytest.fixture(scope="module")
def w_model(tmp_path_factory, cond_teacher):
    root = tmp_path_factory.mktemp("w_model")
    return Trainer(_w_cfg(root, cond_teacher, max_steps=2), tiny_dataset(), progress=False).run().checkpoint


def test_guidance_scale_embedding_equals_diffusers():
    from diffusers import LatentConsistencyModelPipeline
    w = torch.tensor([-1.0, 0.0, 0.5, 1.0, 7.5, 14.0])
    for dim in (4, 7, 32, 256):
        want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        torch.testing.assert_close(guidance_scale_embedding(w, dim), want, rtol=0, atol=0)
    w64 = torch.tensor([2.0001, 7.123456789, 14.0], dtype=torch.float64)  # 1000 w is taken before the cast
    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w64, embedding_dim=32)
    torch.testing.assert_close(guidance_scale_embedding(w64, 32), want, rtol=0, atol=0)


def test_time_embedding_with_guidance_input_equals_diffusers_cond_proj():
    """diffkit's time embedding with the w input is diffusers' Timesteps (flip_sin_to_cos, shift 0) +
    TimestepEmbedding(cond_proj_dim) fed get_guidance_scale_embedding(w), parameter for parameter (the
    names match), so the weights convert one to one to UNet2DConditionModel(time_cond_proj_dim=...)."""
    from diffusers import LatentConsistencyModelPipeline
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps
    torch.manual_seed(0)
    ours = TimeEmbedding(16, 64, cond_dim=8)
    assert torch.count_nonzero(ours.cond_proj.weight) == 0  # starts at zero
    with torch.no_grad():
        ours.cond_proj.weight.normal_()
    theirs = TimestepEmbedding(16, 64, cond_proj_dim=8)
    theirs.load_state_dict(ours.state_dict())
    t, w = torch.tensor([0.0, 19.0, 500.0, 999.0]), torch.tensor([2.0, 3.5, 8.0, 14.0])
    w_emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=8)
    want = theirs(Timesteps(16, flip_sin_to_cos=True, downscale_freq_shift=0)(t), w_emb)
    torch.testing.assert_close(ours(t, guidance_scale_embedding(w, 8)), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(timestep_embedding(t, 16), Timesteps(16, True, 0)(t), rtol=0, atol=1e-6)


def _tiny_unet(**over):
    torch.manual_seed(1)
    return UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[], num_res_blocks=1, img_size=8, in_channels=1,
                           num_classes=3, **over)).eval()


def test_a_network_without_the_input_is_unchanged_and_refuses_w():
    plain = _tiny_unet()
    assert not any("cond_proj" in k for k in plain.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(DiffkitError, match="no guidance-scale input; set guidance_embedding_dim"):
        plain(x, 5.0, y=torch.tensor([0, 1]), w=2.0)
    conditioned = _tiny_unet(guidance_embedding_dim=8)
    with pytest.raises(DiffkitError, match="takes the guidance weight w as input"):
        conditioned(x, 5.0, y=torch.tensor([0, 1]))
    with pytest.raises(DiffkitError, match=r"w of shape \(3,\) is not allowed"):
        conditioned(x, 5.0, y=torch.tensor([0, 1]), w=torch.ones(3))
    with pytest.raises(DiffkitError, match=r"w of shape \(3,\) is not allowed"):
        conditioned(x, 5.0, y=torch.tensor([0, 1]), w=[1.0, 2.0, 3.0])
    with pytest.raises(DiffkitError, match=r"w='high' is not allowed; give guidance weights as a number"):
        conditioned(x, 5.0, y=torch.tensor([0, 1]), w="high")
    torch.testing.assert_close(conditioned(x, 5.0, y=torch.tensor([0, 1]), w=[2.0, 3.0]),
                               conditioned(x, 5.0, y=torch.tensor([0, 1]), w=torch.tensor([2.0, 3.0])), rtol=0, atol=0)
    with pytest.raises(DiffkitError, match="guidance_embedding_dim=2 is not allowed"):
        UNetConfig(guidance_embedding_dim=2)


def test_zero_initialised_w_input_computes_the_unconditioned_network():
    """A U-Net with the w input given the weights of one without it (its zero cond_proj kept)
    computes the same function for every w, as a distillation's student does at its start."""
    plain, conditioned = _tiny_unet(), _tiny_unet(guidance_embedding_dim=8)
    missing = conditioned.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["time_embed.cond_proj.weight"]
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 400.0, 999.0]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        for w in (0.0, 2.0, torch.tensor([2.0, 7.0, 14.0])):
            torch.testing.assert_close(conditioned(x, t, y=y, w=w), plain(x, t, y=y), rtol=0, atol=0)


def test_per_example_guided_teacher_step_matches_hand_computation():
    """LCM Alg. 1 / eq. 8 with w per example: eps-bar = (1 + w_i) eps(x, y) - w_i eps(x, null) from
    the raw network outputs, x0-bar = (x - sigma_t eps-bar) / alpha_t, and the DDIM step
    x_s = alpha_s x0-bar + sigma_s eps-bar (DDIM eq. 12), each sample with its own w and times."""
    net = _tiny_unet()
    schedule = NoiseSchedule.from_name("linear", 1000)
    teacher = ClassifierFreeGuidance(Denoiser(net, schedule, "epsilon"), weight_input=True)
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 2, 3])
    t, s = torch.tensor([999.0, 519.0, 39.0]), torch.tensor([979.0, 499.0, 19.0])
    w = torch.tensor([2.0, 5.5, 14.0])
    with torch.no_grad():
        got = ddim_teacher_step(teacher, x, t, s, y=y, w=w)
        eps_c, eps_u = net(x, t, y=y), net(x, t, y=torch.full_like(y, 3))
    abar = schedule.alphas_cumprod.double()
    a_t, a_s = abar[t.long()].sqrt().float().view(-1, 1, 1, 1), abar[s.long()].sqrt().float().view(-1, 1, 1, 1)
    sig_t, sig_s = (1 - a_t ** 2).sqrt(), (1 - a_s ** 2).sqrt()
    wv = w.view(-1, 1, 1, 1)
    eps_bar = (1 + wv) * eps_c - wv * eps_u
    want = a_s * (x - sig_t * eps_bar) / a_t + sig_s * eps_bar
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # one shared w is the fixed-w guidance of consistency_guidance
        fixed = ddim_teacher_step(ClassifierFreeGuidance(Denoiser(net, schedule, "epsilon"), 5.5), x, t, s, y=y)
        torch.testing.assert_close(ddim_teacher_step(teacher, x, t, s, y=y, w=5.5), fixed, rtol=0, atol=0)
    with pytest.raises(DiffkitError, match=r"takes its weights from cond\['w'\]"):
        teacher(x, t, y=y)


def test_distillation_draws_w_per_example_for_teacher_and_student(tmp_path, cond_teacher):
    """The Trainer's loss is consistency_loss with cond {y (label dropout), w}, w ~ U[w_min, w_max]
    per example drawn after the labels' dropout from the shared generator; the student starts as
    the teacher's network (cond_proj zero) and the guided teacher reads each example's w."""
    tr = Trainer(_w_cfg(tmp_path, cond_teacher, dropout=0.0), tiny_dataset(), progress=False)
    assert isinstance(tr.teacher, ClassifierFreeGuidance) and tr.teacher.weight_input
    teacher_weights = ckpt.split_prefix(ckpt.load_checkpoint(cond_teacher)[0], "ema")
    for name, p in tr.model.named_parameters():
        want = torch.zeros_like(p) if name == "time_embed.cond_proj.weight" else teacher_weights[name]
        assert torch.equal(p.detach(), want), name
    with torch.no_grad():  # a w input that matters, so a student or target call without w would show
        tr.model.time_embed.cond_proj.weight.normal_(generator=torch.Generator().manual_seed(5))
    seen = []
    hook = tr.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs.get("w")),
                                          with_kwargs=True)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    labels = torch.arange(8) % 4
    got, n, noise, _ = batch_loss_and_uniform_draws(tr, images, labels)
    hook.remove()
    drop = torch.rand(8, generator=tr.generator) < tr.cfg.p_uncond
    w = RANGE[0] + (RANGE[1] - RANGE[0]) * torch.rand(8, generator=tr.generator, dtype=torch.float64)
    assert ((w >= RANGE[0]) & (w <= RANGE[1])).all() and len(set(w.tolist())) == 8
    assert len(seen) == 2 and all(torch.equal(v, w.float()) for v in seen)  # the student and its target get each w
    y = torch.where(drop, torch.full_like(labels, 4), labels)
    t_now, t_next = tr.consistency_grid[n], tr.consistency_grid[n + 1]
    want = consistency_loss(tr.student, images, noise, t_next, t_now, teacher=tr.teacher,
                            cond={"y": y, "w": w.float()}).mean()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = consistency_loss(tr.student, images, noise, t_next, t_now, teacher=tr.teacher,
                             cond={"y": y, "w": w.float() + 3}).mean()
    assert not torch.equal(got, other)  # the teacher's guidance follows w


def test_a_w_model_samples_with_w_as_input_one_call_of_batch_b_per_step(w_model):
    den = load_denoiser(w_model)
    assert isinstance(den, ConsistencyDenoiser) and den.guidance_range == (2.0, 6.0)
    assert den.meta["consistency"]["guidance_range"] == RANGE and den.meta["unet"]["guidance_embedding_dim"] == 8
    batches = []
    den.model.register_forward_hook(lambda module, args, kwargs, out: batches.append((args[0].shape[0], kwargs["w"])),
                                    with_kwargs=True)
    y = torch.tensor([0, 1, 2, 3])
    guided = GuidanceScaleInput(den, 3.0)
    guided.reset_nfe()
    out = diffkit.sample(guided, (4, 1, 8, 8), sampler="consistency", steps=2, seed=0, cond={"y": y}, progress=False)
    assert guided.nfe == 2 and batches == [(4, 3.0), (4, 3.0)]  # one call of batch B per step, w passed
    same = diffkit.sample(den, (4, 1, 8, 8), sampler="consistency", steps=2, seed=0, cond={"y": y, "w": 3.0},
                          progress=False)
    torch.testing.assert_close(out, same, rtol=0, atol=0)
    other = diffkit.sample(den, (4, 1, 8, 8), sampler="consistency", steps=2, seed=0, cond={"y": y, "w": 5.0},
                           progress=False)
    assert not torch.equal(out, other)  # the trained w input is used
    mid = diffkit.sample(den, (4, 1, 8, 8), sampler="consistency", steps=2, seed=0, cond={"y": y}, progress=False)
    torch.testing.assert_close(mid, diffkit.sample(den, (4, 1, 8, 8), sampler="consistency", steps=2, seed=0,
                                                   cond={"y": y, "w": 4.0}, progress=False), rtol=0, atol=0)
    diffusers_s = GuidanceScaleInput(den, 4.0, convention="diffusers")  # s = 1 + w
    assert diffusers_s.w == 3.0
    with pytest.warns(UserWarning, match=r"w=9 \(seed convention\) lies outside the range \[2, 6\]"):
        GuidanceScaleInput(den, 9.0)  # the loaded model's own range by default
    with pytest.warns(UserWarning, match=r"lies outside the range \[2, 6\]"):
        GuidanceScaleInput(ThresholdedDenoiser(den, "clip"), 9.0)
    with pytest.raises(DiffkitError, match="takes the guidance weight w as its input"):
        ClassifierFreeGuidance(ThresholdedDenoiser(den, "clip"), 3.0)  # also under another wrapper
    ClassifierFreeGuidance(GuidanceScaleInput(den, 3.0), 1.0)  # w given below: two passes at that w are explicit
    with pytest.raises(DiffkitError, match="takes the guidance weight w as its input .* GuidanceScaleInput"):
        ClassifierFreeGuidance(den, 3.0)  # two calls, each at the default w, would be a silent mistake


def test_sample_cli_passes_guidance_scale_to_a_w_model(w_model, tmp_path, capsys, monkeypatch):
    from diffkit.cli import main
    from diffkit.models.unet import UNet
    calls, forward = [], UNet.forward

    def recording_forward(self, x, t, *args, **kwargs):
        w = kwargs.get("w")
        calls.append((x.shape[0], None if w is None else torch.as_tensor(w).flatten().tolist()))
        return forward(self, x, t, *args, **kwargs)
    monkeypatch.setattr(UNet, "forward", recording_forward)
    out = tmp_path / "s.png"
    for flags, want_w in ((["--guidance-scale", "3"], 3.0), ([], 4.0),  # no flag: the middle of [2, 6]
                          (["--guidance-scale", "5", "--guidance-convention", "diffusers"], 4.0)):  # s = 1 + w
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert main(["sample", "--checkpoint", str(w_model), "--sampler", "consistency", "--steps", "2", "--num",
                         "4", *flags, "--out", str(out), "--no-progress", "--batch-size", "4"]) == 0
        assert out.exists() and len(calls) == 2, flags  # one call of batch B per step
        assert all(b == 4 and set(w) == {want_w} for b, w in calls), (flags, calls)
    assert main(["sample", "--checkpoint", str(w_model), "--num", "4", "--guidance-scale", "3",
                 "--guidance-rescale", "0.5", "--out", str(out), "--no-progress"]) == 2
    assert "--guidance-rescale is an option of classifier-free guidance" in capsys.readouterr().err


def test_resume_refuses_a_changed_guidance_range(tmp_path, cond_teacher):
    Trainer(_w_cfg(tmp_path, cond_teacher, max_steps=3), tiny_dataset(), progress=False).run(stop_at=1)
    part = str(tmp_path / "ckpt" / "latest.safetensors")
    cfg = make_cfg(tmp_path, objective="consistency-distillation", teacher=str(cond_teacher), ema_warmup=True,
                   conditional=True, consistency_guidance_range=[1.0, 3.0], guidance_embedding_dim=8,
                   max_steps=3, training_load_weight=part)
    with pytest.raises(DiffkitError, match=r"consistency_guidance_range=\[2\.0, 6\.0\], this run has \[1\.0, 3\.0\]") \
            as err:
        Trainer(cfg, tiny_dataset(), progress=False).run()
    assert "\n" not in str(err.value)
    assert Trainer(_w_cfg(tmp_path, cond_teacher, max_steps=3, training_load_weight=part), tiny_dataset(),
                   progress=False).run().steps == 3


def test_export_of_a_w_model_to_diffusers_is_refused(w_model, tmp_path):
    from diffkit.interop.diffusers_unet import export_diffusers
    with pytest.raises(DiffkitError, match="guidance_embedding_dim=8 .* has no time_cond_proj_dim") as err:
        export_diffusers(w_model, tmp_path / "hf")
    assert "\n" not in str(err.value)


_DIST = {"objective": "consistency-distillation", "teacher": "t.safetensors", "conditional": True}


@pytest.mark.parametrize("over,message", [
    ({**_DIST, "consistency_guidance_range": [2, 14]}, "needs a guidance-scale input: set guidance_embedding_dim"),
    ({**_DIST, "conditional": False, "consistency_guidance_range": [2, 14], "guidance_embedding_dim": 8},
     "guides a class-conditional teacher; it needs objective='consistency-distillation' and conditional=True"),
    ({"objective": "consistency-training", "consistency_guidance_range": [2, 14], "guidance_embedding_dim": 8},
     "it needs objective='consistency-distillation'"),
    ({"conditional": True, "consistency_guidance_range": [2, 14], "guidance_embedding_dim": 8},
     "it needs objective='consistency-distillation'"),
    ({**_DIST, "consistency_guidance_range": [14, 2], "guidance_embedding_dim": 8},
     r"consistency_guidance_range=\[14\.0, 2\.0\] is not allowed; give \[w_min, w_max\] with 0 <= w_min <= w_max"),
    ({**_DIST, "consistency_guidance_range": [-2, 2], "guidance_embedding_dim": 8}, "0 <= w_min <= w_max"),
    ({**_DIST, "consistency_guidance_range": [2], "guidance_embedding_dim": 8}, r"give \[w_min, w_max\]"),
    ({**_DIST, "consistency_guidance_range": ["a", 2], "guidance_embedding_dim": 8}, "a list of finite numbers"),
    ({**_DIST, "consistency_guidance_range": [2, 14], "guidance_embedding_dim": 8, "consistency_guidance": 3.0},
     "exclude each other"),
    ({**_DIST, "guidance_embedding_dim": 8}, "guidance_embedding_dim=8 is the guidance-scale input .* needs "
                                             r"consistency_guidance_range=\[w_min, w_max\]"),
    ({"guidance_embedding_dim": -1}, "guidance_embedding_dim"),
    ({**_DIST, "consistency_guidance_range": [2, 14], "guidance_embedding_dim": 3},
     "guidance_embedding_dim=3 is not allowed; give 0 \\(none\\) or at least 4"),
])
def test_bad_guidance_range_config_is_one_line_error(over, message):
    with pytest.raises(DiffkitError, match=message) as err:
        TrainConfig.from_dict({**TINY, **over})
    assert "\n" not in str(err.value)


def test_guidance_range_reads_from_the_command_line():
    from diffkit.config import apply_overrides
    cfg = apply_overrides(TrainConfig.from_dict({**TINY, **_DIST}),
                          ["consistency_guidance_range=2,14.5", "guidance_embedding_dim=256"])
    assert cfg.consistency_guidance_range == [2.0, 14.5] and cfg.to_unet_kwargs()["guidance_embedding_dim"] == 256
    assert "guidance_embedding_dim" not in TrainConfig.from_dict(TINY).to_unet_kwargs()  # old models unchanged


def test_a_guided_distillation_needs_a_teacher_that_trained_its_null_class(tmp_path, cond_teacher, capsys,
                                                                           monkeypatch):
    """CFG extrapolates from eps(x, null) (Ho & Salimans 2022, eq. 6): a teacher trained with p_uncond=0
    never trained its null class, so guided distillation from it (fixed w or LCM's w range) is a one-line
    error, from diffkit distill before its run folder is made; a teacher with p_uncond > 0 (cond_teacher:
    the default 0.1) or one whose config predates the key (taken as 0.1, as diffkit sample does) is
    accepted."""
    from diffkit.cli import main
    tensors, meta = ckpt.load_checkpoint(cond_teacher)
    unguidable = ckpt.save_checkpoint(tmp_path / "p0.safetensors", tensors,
                                      {**meta, "config": {**meta["config"], "p_uncond": 0.0}})
    old = ckpt.save_checkpoint(tmp_path / "old.safetensors", tensors,
                               {**meta, "config": {k: v for k, v in meta["config"].items() if k != "p_uncond"}})
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--teacher", str(unguidable), "--out", "cm", "--steps", "1",
                 "--set", "consistency_guidance=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "consistency_guidance=2.0 guides teacher=" in err, err
    assert "trained with p_uncond=0, so its null class is untrained" in err, err
    assert not (tmp_path / "cm").exists()
    from diffkit.commands.distill import distill_config
    with pytest.raises(DiffkitError, match=r"consistency_guidance=2\.0 guides .*p_uncond=0"):  # the config refuses
        distill_config(unguidable, tmp_path / "cm", ["consistency_guidance=2"])
    with pytest.raises(DiffkitError, match=r"consistency_guidance_range=\[2\.0, 6\.0\] guides .*p_uncond=0"):
        Trainer(_w_cfg(tmp_path, unguidable), tiny_dataset(), progress=False)
    for teacher in (cond_teacher, old):
        assert Trainer(_w_cfg(tmp_path, teacher), tiny_dataset(), progress=False).teacher is not None
    Trainer(make_cfg(tmp_path, objective="consistency-distillation", teacher=str(unguidable), conditional=True),
            tiny_dataset(), progress=False)  # unguided: the null class is not used
