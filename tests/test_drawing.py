"""diffkit.drawing.draw_samples: N samples in batches, sample i from seed + i whatever the batch
(docs/reliability.md, "Determinism"), on exact Gaussian-mixture denoisers (diffkit.analytic)."""
import pytest
import torch

import diffkit
from diffkit.analytic import GaussianMixture, gaussian_ode_solution
from diffkit.denoiser import Denoiser
from diffkit.drawing import draw_samples
from diffkit.noise import STEP_SEED_OFFSET
from diffkit.samplers.registry import get_sampler
from diffkit.sampling import sampler_grid
from diffkit.schedule import NoiseSchedule

F64 = torch.float64


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear()


def denoiser_of(mixture, schedule):
    return Denoiser(mixture.network(schedule), schedule)


def collect(denoiser, num, **kw):
    batches = []
    drawn = draw_samples(denoiser, num, (3,), sink=batches.append, **kw)
    return drawn, batches, torch.cat([b.images for b in batches])


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_sample_i_comes_from_seed_plus_i_whatever_the_batch_size(schedule, sampler, options):
    """Stochastic samplers: x_T of sample i from seed + i, its steps' noise from seed + 10000019 + i."""
    d = denoiser_of(GaussianMixture.random(3, 3, seed=5), schedule)
    seed, num = 11, 7
    reference = torch.cat([diffkit.sample(d, torch.randn(1, 3, generator=torch.Generator().manual_seed(seed + i)),
                                          sampler, 4, progress=False, **options,
                                          generator=[torch.Generator().manual_seed(seed + STEP_SEED_OFFSET + i)])
                           for i in range(num)])
    for batch_size in (1, 3, 7, "auto"):
        drawn, batches, images = collect(d, num, seed=seed, sampler=sampler, steps=4, batch_size=batch_size, **options)
        assert torch.equal(images, reference), batch_size
        assert drawn.batches == len(batches) and [b.start for b in batches] == list(range(0, num, drawn.batch_size))
        assert drawn.calls == sum(b.nfe for b in batches) == 4 * len(batches)  # one call per step and batch
        assert drawn.nfe == 4


def test_steps_may_continue_the_noise_generators_as_diffkit_sample_seed_does(schedule):
    d = denoiser_of(GaussianMixture.random(3, 2, seed=1), schedule)
    _, _, images = collect(d, 5, seed=3, sampler="ddpm", steps=3, batch_size=2, separate_step_seeds=False)
    reference = torch.cat([diffkit.sample(d, (1, 3), "ddpm", 3, seed=3 + i, progress=False) for i in range(5)])
    assert torch.equal(images, reference)


def test_each_batch_noise_goes_to_its_exact_ode_solution(schedule):
    """Gaussian data: the probability-flow ODE has a closed form (diffkit.analytic); each Batch's
    images are its own noise carried along it (UniPC, 50 steps, to the grid's last time)."""
    mix = GaussianMixture.random(3, 1, seed=3)
    d = denoiser_of(mix, schedule)
    _, batches, _ = collect(d, 6, seed=2, sampler="unipc", steps=50, batch_size=4)
    grid = sampler_grid(d, get_sampler("unipc"), 50)
    t, s = (torch.tensor([float(grid[i])], dtype=torch.float32).to(F64) for i in (0, -1))  # the network's times
    for b in batches:
        exact = gaussian_ode_solution(mix.means[0], mix.covs[0], b.noise, schedule.alpha(t), schedule.sigma(t),
                                      schedule.alpha(s), schedule.sigma(s))
        assert (b.images.to(F64) - exact).abs().max() < 1e-3


def test_conditions_per_sample_skip_and_decode(schedule):
    """Labels pick the mixture component; a mapping and a function give each batch its rows;
    skipped batches are not drawn; decoded samples are clamped to [-1, 1]."""
    d = denoiser_of(GaussianMixture.random(3, 3, seed=7), schedule)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    _, _, by_map = collect(d, 6, sampler="ddim", steps=3, batch_size=4, cond={"y": labels})
    _, _, by_fn = collect(d, 6, sampler="ddim", steps=3, batch_size=1,
                          cond=lambda start, n: {"y": labels[start:start + n]})
    assert torch.equal(by_map, by_fn)
    _, _, unconditional = collect(d, 6, sampler="ddim", steps=3, batch_size=4)
    assert not torch.equal(by_map, unconditional)
    drawn, batches, kept = collect(d, 6, sampler="ddim", steps=3, batch_size=2, cond={"y": labels},
                                   skip=lambda start, n: start == 2, decode=lambda z: 10 * z)
    assert [b.start for b in batches] == [0, 4] and drawn.batches == 2 and drawn.calls == 6 and drawn.nfe == 3
    assert torch.equal(kept, (10 * by_map[[0, 1, 4, 5]]).clamp(-1, 1))


def test_a_batch_out_of_memory_is_drawn_again_at_half_the_size(schedule, capsys):
    d = denoiser_of(GaussianMixture.random(3, 2, seed=2), schedule)

    def small_batches_only(denoiser, noise, *args, **kwargs):
        if noise.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return diffkit.sample(denoiser, noise, *args, **kwargs)
    unhalved, _, plain = collect(d, 5, sampler="ddpm", steps=3, batch_size=5)
    drawn, batches, retried = collect(d, 5, sampler="ddpm", steps=3, batch_size=5, sample_fn=small_batches_only)
    assert torch.equal(plain, retried) and [b.start for b in batches] == [0, 2, 4]
    assert "retrying with 2" in capsys.readouterr().err
    assert (drawn.first_batch_size, drawn.batch_size, drawn.batches) == (5, 2, 3)  # the size used after the halving
    assert (unhalved.first_batch_size, unhalved.batch_size, unhalved.batches) == (5, 5, 1)


def test_an_attempt_that_ran_out_of_memory_costs_no_nfe(schedule):
    """The decoder runs out of memory once, after the batch of 5 was sampled (3 calls): the
    samples are drawn again in batches of 2, 2, 1; each sample took 3 network evaluations."""
    d = denoiser_of(GaussianMixture.random(3, 2, seed=2), schedule)
    failed = []

    def decode_once_out_of_memory(z):
        if not failed:
            failed.append(z.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return z
    _, _, plain = collect(d, 5, sampler="ddim", steps=3, batch_size=5, decode=lambda z: z)
    drawn, batches, retried = collect(d, 5, sampler="ddim", steps=3, batch_size=5, decode=decode_once_out_of_memory)
    assert failed == [5] and torch.equal(plain, retried) and [b.start for b in batches] == [0, 2, 4]
    assert [b.nfe for b in batches] == [3, 3, 3] and drawn.batches == 3 and drawn.calls == 9 and drawn.nfe == 3
    assert d.nfe == 3 + 3 + 9  # the counter itself saw every call, the failed attempt's too


def test_nfe_per_sample_weighs_batches_by_their_samples():
    from diffkit.drawing import nfe_per_sample
    assert nfe_per_sample([(4, 10), (2, 10), (2, 10)]) == 10 and isinstance(nfe_per_sample([(1, 10)]), int)
    assert nfe_per_sample([(3, 10), (1, 20)]) == 12.5
    assert nfe_per_sample([]) is None
