"""benchmarks/samplers.py's flags (the benchmark itself takes 30-45 minutes and is not run here)."""
import sys
import warnings
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def samplers_benchmark(monkeypatch, tmp_path):
    """The module, with its work replaced by a recorder of what it was asked to run."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with warnings.catch_warnings():  # the module silences warnings when imported; keep that local
        import samplers
    calls = []
    monkeypatch.setattr(samplers, "benchmark", lambda mix, n, nfes, log, seeds: calls.append((mix, n, seeds)))
    monkeypatch.setattr(samplers, "write_outputs",
                        lambda results, over, nfes, out: (out / "samplers.md").write_text(""))
    yield lambda *argv: (samplers.main([*argv, "--no-overhead", "--out", str(tmp_path)]), calls)[1]
    sys.modules.pop("samplers", None)


@pytest.mark.parametrize("argv,seeds", [(["--quick"], [1234]), (["--quick", "--noise-seeds", "5,6"], [5, 6]),
                                        (["--quick", "--noise-seeds", "99"], [99])])
def test_quick_shrinks_sizes_but_keeps_the_noise_seeds_given(samplers_benchmark, argv, seeds):
    """--quick used to drop every --noise-seeds value but the first."""
    calls = samplers_benchmark(*argv)
    assert [(n, s) for _, n, s in calls] == [(2000, seeds)]  # one mixture, 2k samples per seed


def test_full_run_uses_the_three_default_seeds(samplers_benchmark):
    calls = samplers_benchmark("--nfes", "5", "--samples", "10")
    assert [(n, s) for _, n, s in calls] == [(10, [1234, 99, 7777])] * 3


@pytest.mark.parametrize("extra", [[], ["--overhead-only"]])
def test_unknown_overhead_sampler_is_a_one_line_error(samplers_benchmark, capsys, extra):
    """--overhead-samplers ipdnm (a typo) used to end in a KeyError traceback once the overhead ran;
    now it is refused before anything runs, naming it and the allowed names."""
    with pytest.raises(SystemExit) as code:
        samplers_benchmark(*extra, "--overhead-samplers", "euler,ipdnm")
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1
    assert "'ipdnm'" in err and "allowed: ddim," in err and "ipndm" in err


def test_make_scheduler_gives_the_betas_to_every_scheduler_but_ipndm(monkeypatch):
    """The DDPM betas go to every scheduler, one whose __init__ takes **kwargs included (it used to
    get none, by the signature filter, and run on its default betas); IPNDMScheduler, which has its
    own schedule, is left out by name."""
    import diffusers
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with warnings.catch_warnings():
        import samplers

    class AnyKwargs:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setattr(diffusers, "AnyKwargsScheduler", AnyKwargs, raising=False)
    assert samplers.make_scheduler("AnyKwargsScheduler", {"x": 1}).kwargs == {**samplers.BETAS, "x": 1}
    assert samplers.make_scheduler("DDIMScheduler", {}).config.beta_end == 0.02
    assert samplers.make_scheduler("IPNDMScheduler", {}).config.num_train_timesteps == 1000
    sys.modules.pop("samplers", None)
