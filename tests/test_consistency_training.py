"""Consistency distillation / training in diffkit's Trainer and ``diffkit distill`` (tiny models,
seconds on the CPU)."""
import pytest
import torch

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.consistency import ConsistencyDenoiser
from diffkit.loading import load_denoiser
from diffkit.training import Trainer

from test_training import TINY, make_cfg, tiny_dataset


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    Trainer(TrainConfig.from_dict({**TINY, "max_steps": 3, "save_weight_dir": str(root / "ckpt")}), tiny_dataset(),
            progress=False).run()
    return root / "ckpt" / "latest.safetensors"


def _cd(tmp_path, teacher, **over):
    return make_cfg(tmp_path, objective="consistency-distillation", teacher=str(teacher), ema_warmup=True, **over)


def test_distillation_starts_from_the_teacher_and_writes_a_consistency_checkpoint(tmp_path, teacher):
    tr = Trainer(_cd(tmp_path, teacher, max_steps=3), tiny_dataset(), progress=False)
    teacher_weights = ckpt.split_prefix(ckpt.load_checkpoint(teacher)[0], "ema")
    for name, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), teacher_weights[name]), name
    result = tr.run()
    _, meta = ckpt.load_checkpoint(result.checkpoint)
    assert meta["consistency"]["objective"] == "consistency-distillation"
    assert meta["consistency"]["grid"][:3] == [0, 19, 39] and meta["consistency"]["sigma_data"] == 0.5
    den = load_denoiser(result.checkpoint)
    assert isinstance(den, ConsistencyDenoiser) and den.meta == meta
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(den(x, 0).x0, x)  # the boundary condition of the loaded model
    import diffkit
    den.reset_nfe()
    out = diffkit.sample(den, x, sampler="consistency", steps=2, seed=0, progress=False)
    assert torch.isfinite(out).all() and den.nfe == 2


@pytest.mark.parametrize("objective", ["consistency-distillation", "consistency-training"])
def test_consistency_resume_equals_uninterrupted_bitwise(tmp_path, teacher, objective, assert_same_training_state):
    def cfg(folder, **over):
        extra = {"teacher": str(teacher)} if objective == "consistency-distillation" else {}
        return make_cfg(tmp_path / folder, objective=objective, max_steps=7, consistency_skip=100, **extra, **over)
    Trainer(cfg("a"), tiny_dataset(), progress=False).run()
    Trainer(cfg("b"), tiny_dataset(), progress=False).run(stop_at=3)
    Trainer(cfg("b", training_load_weight=str(tmp_path / "b" / "ckpt" / "latest.safetensors")), tiny_dataset(),
            progress=False).run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors",
                               tmp_path / "b" / "ckpt" / "latest.safetensors", 7)


def test_resuming_across_objectives_is_refused(tmp_path, teacher):
    with pytest.raises(DiffkitError, match="objective='diffusion', this run has 'consistency-distillation'") as err:
        Trainer(_cd(tmp_path, teacher, training_load_weight=str(teacher)), tiny_dataset(), progress=False).run()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("over,message", [
    ({"objective": "consistency-distillation"}, "needs teacher=PATH"),
    ({"teacher": "t.safetensors"}, "used only by objective='consistency-distillation'"),
    ({"consistency_skip": 10}, "applies to the consistency objectives"),
    ({"objective": "consistency-training", "consistency_skip": 1000},
     r"consistency_skip=1000 is not allowed; give an integer 1\.\.999"),
    ({"objective": "consistency-training", "consistency_skip": 0}, "consistency_skip=0"),
    ({"objective": "consistency-training", "consistency_distance": "l1"}, "consistency_distance"),
    ({"objective": "consistency-training", "timestep_sampler": "loss-aware"}, "belongs to the diffusion objective"),
    ({"objective": "consistency-training", "consistency_guidance": 2.0},
     "needs objective='consistency-distillation' and conditional"),
    ({"objective": "flow"}, "objective"),
])
def test_bad_consistency_config_is_one_line_error(over, message):
    with pytest.raises(DiffkitError, match=message) as err:
        TrainConfig.from_dict({**TINY, **over})
    assert "\n" not in str(err.value)


def test_teacher_that_is_not_a_diffkit_checkpoint_is_one_line_error(tmp_path, teacher):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    for path, message in ((junk, "corrupt"), (tmp_path / "missing.safetensors", "does not exist")):
        with pytest.raises(DiffkitError, match=message) as err:
            Trainer(_cd(tmp_path, path), tiny_dataset(), progress=False)
        assert "\n" not in str(err.value)
    other = make_cfg(tmp_path / "o", max_steps=1, T=500)
    Trainer(other, tiny_dataset(), progress=False).run()
    with pytest.raises(DiffkitError, match="another noise schedule"):
        Trainer(_cd(tmp_path, tmp_path / "o" / "ckpt" / "latest.safetensors"), tiny_dataset(), progress=False)


def test_distill_cli_trains_samples_and_resumes(tmp_path, teacher, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["distill", "--teacher", str(teacher), "--out", "cm", "--steps", "2", "--no-progress", "--no-sample",
                 "--set", "consistency_skip=100"]) == 0
    latest = tmp_path / "cm" / "checkpoints" / "latest.safetensors"
    _, meta = ckpt.load_checkpoint(latest)
    assert meta["config"]["objective"] == "consistency-distillation" and meta["config"]["sampler"] == "consistency"
    assert meta["consistency"]["grid"][:3] == [0, 99, 199]
    assert main(["sample", "--checkpoint", str(latest), "--sampler", "consistency", "--steps", "2", "--num", "4",
                 "--out", "s.png", "--no-progress"]) == 0
    assert (tmp_path / "s.png").exists() and "2 network evaluations per sample" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(tmp_path / "cm" / "checkpoints"), "--num", "4", "--out", "d.png",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out  # a consistency model's defaults: its sampler, its config's 4 steps
    assert "consistency" in out and "4 network evaluations per sample" in out, out
    import json  # the same defaults when the checkpoint comes from a config's test_load_weight
    (tmp_path / "c.json").write_text(json.dumps({**meta["config"], "test_load_weight": "latest.safetensors",
                                                 "sampled_dir": "cs"}))
    assert main(["sample", "--config", "c.json", "--num", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "consistency" in out and "4 network evaluations per sample" in out, out
    from diffkit.evaluation import generate_samples
    from diffkit.loading import load_denoiser
    from diffkit.sample_cache import open_cache
    drawn = []  # eval's sample cache serves a consistency model: the second draw is read back, NFE counted
    for _ in range(2):
        den = load_denoiser(latest)
        cache = open_cache(tmp_path / "cache", den)
        images, nfe = generate_samples(den, 4, sampler="consistency", steps=2, seed=0, cache=cache, return_nfe=True)
        drawn.append((images, nfe, cache.loaded, den.nfe))
    assert torch.equal(drawn[0][0], drawn[1][0]) and drawn[0][1] == drawn[1][1] == 2
    assert [d[2] for d in drawn] == [0, 1] and [d[3] for d in drawn] == [2, 2]  # the reused batch adds its 2 calls
    from diffkit.consistency import ConsistencyDenoiser
    from diffkit.sample_cache import denoiser_identity
    plain = load_denoiser(latest).inner  # the same network under a hand-made wrapper of other settings: other key
    keys = [denoiser_identity(ConsistencyDenoiser(plain, sigma_data=s)) for s in (0.5, 0.3)]
    assert keys[0] != keys[1] and denoiser_identity(plain) not in keys
    capsys.readouterr()
    assert main(["distill", "--resume", str(latest), "--steps", "3", "--no-progress", "--no-sample"]) == 0
    assert ckpt.load_checkpoint(latest)[1]["step"] == 3
    assert f"resumed from {latest} at step 2" in capsys.readouterr().out  # as diffkit train --resume says
    assert main(["distill", "--teacher", str(latest), "--out", "again"]) == 2  # a consistency model is no teacher
    assert "is a consistency model" in capsys.readouterr().err
    assert main(["distill", "--out", "x"]) == 2
    assert "needs --teacher" in capsys.readouterr().err


def test_guided_distillation_of_a_conditional_teacher(tmp_path):
    """consistency_guidance = w distils the classifier-free-guided teacher (LCM eq. 8 with w fixed)."""
    from diffkit.guidance import ClassifierFreeGuidance
    teacher_cfg = make_cfg(tmp_path / "t", max_steps=2, conditional=True)
    Trainer(teacher_cfg, tiny_dataset(), progress=False).run()
    teacher = tmp_path / "t" / "ckpt" / "latest.safetensors"
    tr = Trainer(_cd(tmp_path / "s", teacher, max_steps=2, conditional=True, consistency_guidance=1.5), tiny_dataset(),
                 progress=False)
    assert isinstance(tr.teacher, ClassifierFreeGuidance) and tr.teacher.w == 1.5
    assert tr.run().steps == 2
    den = load_denoiser(tmp_path / "s" / "ckpt" / "latest.safetensors")
    assert den.meta["consistency"]["guidance"] == 1.5


@pytest.mark.parametrize("skip,first", [(30, 989.0), (100, 999.0), (None, 999.0)])
def test_a_consistency_model_samples_on_the_grid_it_was_distilled_on(tmp_path, teacher, skip, first):
    """The consistency sampler's lcm spacing takes the loaded model's skipping step: every time it
    evaluates at is a time the distillation trained on (with skip 30 the top one is 989, not 999)."""
    from diffkit.sampling import sampler_grid
    from diffkit.samplers import get_sampler
    over = {} if skip is None else {"consistency_skip": skip}
    den = load_denoiser(Trainer(_cd(tmp_path, teacher, max_steps=1, **over), tiny_dataset(), progress=False)
                        .run().checkpoint)
    trained = set(float(t) for t in den.meta["consistency"]["grid"])
    for steps in (1, 2, 4):
        grid = sampler_grid(den, get_sampler("consistency"), steps=steps)
        assert grid[0].item() == first and set(grid[:-1].tolist()) <= trained, (steps, grid)


def test_a_resume_keeps_the_teacher_and_the_parameterisation(tmp_path, teacher):
    """An exact resume of a distillation refuses a teacher whose weights changed (a latest.safetensors
    that trained on), a moved teacher (with the flag that fixes it), and a changed boundary
    parameterisation, skip, distance or guidance: each a one-line error."""
    import shutil
    mine = tmp_path / "teacher.safetensors"
    shutil.copy(teacher, mine)
    Trainer(_cd(tmp_path / "run", mine, max_steps=4), tiny_dataset(), progress=False).run(stop_at=2)
    part = str(tmp_path / "run" / "ckpt" / "latest.safetensors")
    for over, message in [({"consistency_timestep_scaling": 1.0},
                           "consistency_timestep_scaling=10.0, this run has 1.0"),
                          ({"consistency_skip": 5}, "consistency_skip=None, this run has 5"),
                          ({"consistency_distance": "l2"}, "consistency_distance='pseudo-huber', this run has 'l2'")]:
        with pytest.raises(DiffkitError, match=message) as err:
            Trainer(_cd(tmp_path / "run", mine, max_steps=4, training_load_weight=part, **over), tiny_dataset(),
                    progress=False).run()
        assert "\n" not in str(err.value)
    other = tmp_path / "other"
    Trainer(TrainConfig.from_dict({**TINY, "max_steps": 1, "seed": 7, "save_weight_dir": str(other)}), tiny_dataset(),
            progress=False).run()
    shutil.copy(other / "latest.safetensors", mine)  # the teacher file moved on
    with pytest.raises(DiffkitError, match="is not the one .* was distilled from"):
        Trainer(_cd(tmp_path / "run", mine, max_steps=4, training_load_weight=part), tiny_dataset(),
                progress=False).run()
    mine.unlink()
    with pytest.raises(DiffkitError, match="does not exist; .*--set teacher=PATH"):
        Trainer(_cd(tmp_path / "run", mine, max_steps=4, training_load_weight=part), tiny_dataset(), progress=False)
    shutil.copy(teacher, mine)  # the same teacher again: the resume runs
    assert Trainer(_cd(tmp_path / "run", mine, max_steps=4, training_load_weight=part), tiny_dataset(),
                   progress=False).run().steps == 4


def batch_loss_and_uniform_draws(tr, images, labels):
    """The Trainer's batch loss, then its generator rewound and its draws replayed by hand as the
    documented order says: a uniform pair index n per sample of the step's grid, then the noise.
    Returns (loss, n, noise, generator) with the generator positioned after the noise."""
    state = tr.generator.get_state()
    got = tr._micro_batch_loss(images, labels)
    tr.generator.set_state(state)
    n = torch.randint(len(tr.consistency_grid) - 1, (images.shape[0],), generator=tr.generator)
    noise = torch.randn(images.shape, generator=tr.generator)
    return got, n, noise, tr.generator


@pytest.mark.parametrize("objective", ["consistency-distillation", "consistency-training"])
def test_the_trainers_loss_is_the_consistency_loss_of_its_draws(tmp_path, teacher, objective):
    """The Trainer's batch loss is consistency_loss (tested against closed forms in
    test_consistency.py) on a uniform grid pair (t_n, t_{n+1}) per sample, the student's f at
    t_{n+1}, the teacher's DDIM step for distillation and none for training: a swapped pair, a lost
    teacher or a zero-length pair would change the value."""
    from diffkit.consistency import consistency_loss
    extra = {"teacher": str(teacher)} if objective == "consistency-distillation" else {}
    tr = Trainer(make_cfg(tmp_path, objective=objective, dropout=0.0, **extra), tiny_dataset(), progress=False)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got, n, noise, _ = batch_loss_and_uniform_draws(tr, images, torch.zeros(8))
    t_now, t_next = tr.consistency_grid[n], tr.consistency_grid[n + 1]
    assert (t_next > t_now).all()
    want = consistency_loss(tr.student, images, noise, t_next, t_now, teacher=tr.teacher).mean()
    assert (tr.teacher is None) == (objective == "consistency-training")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if tr.teacher is not None:  # (training's distance is symmetric in the pair)
        swapped = consistency_loss(tr.student, images, noise, t_now, t_next, teacher=tr.teacher).mean()
        assert not torch.equal(got, swapped)


def _train_config(*argv):
    from diffkit.cli import build_parser
    from diffkit.commands.train import config_from_args
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_consistency_objectives_default_to_the_consistency_sampler_unless_set(tmp_path, teacher):
    """A config that does not give sampler / sample_steps takes its objective's (consistency, 4 steps
    for both consistency objectives, as diffkit distill); what --set or a --config file gives is kept."""
    ct = ["--set", "objective=consistency-training"]
    assert (_train_config().sampler, _train_config().sample_steps) == ("ddim", 50)
    cfg = _train_config(*ct)
    assert (cfg.sampler, cfg.sample_steps) == ("consistency", 4)
    cfg = _train_config(*ct, "--set", "sampler=ddim")
    assert (cfg.sampler, cfg.sample_steps) == ("ddim", 4)
    assert _train_config(*ct, "--set", "sample_steps=2").sample_steps == 2
    import json
    for extra, sampler in (({}, "consistency"), ({"sampler": "ddim"}, "ddim")):
        (tmp_path / "c.json").write_text(json.dumps({"objective": "consistency-training", **extra}))
        assert _train_config("--config", str(tmp_path / "c.json")).sampler == sampler
    from diffkit.commands.distill import distill_config
    cfg = distill_config(teacher, tmp_path / "cd")  # the teacher's ddim / 50 give way to the objective's
    assert (cfg.sampler, cfg.sample_steps) == ("consistency", 4)
    assert distill_config(teacher, tmp_path / "cd", ["sampler=ddim"]).sampler == "ddim"


def test_consistency_training_samples_its_end_of_run_grid_with_the_consistency_sampler(tmp_path, capsys,
                                                                                     monkeypatch):
    """diffkit train --set objective=consistency-training draws its grid as diffkit sample on the
    checkpoint would: the consistency sampler, its 4 default steps at most one per source time (a
    CM curriculum with s1 = 2 has 2)."""
    monkeypatch.chdir(tmp_path)
    tiny = [f"--set={pair}" for pair in ("img_size=8", "channel=16", "channel_mult=1,2", "attn=1", "num_res_blocks=1")]
    base = ["train", "--steps", "2", "--device", "cpu", "--no-progress", "--set", "objective=consistency-training",
            *tiny]
    assert main([*base, "--out", "ct"]) == 0
    assert "consistency, 4 network evaluations per sample" in capsys.readouterr().out
    assert main([*base, "--out", "cm", "--set", "consistency_curriculum=cm", "--set", "consistency_s0=2",
                 "--set", "consistency_s1=2"]) == 0
    assert "consistency, 2 network evaluations per sample" in capsys.readouterr().out
