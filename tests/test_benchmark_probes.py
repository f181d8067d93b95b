"""The 8-d RMS probes' command lines (benchmarks/flip_anatomy.py, start_offset.py, rms_cell_spread.py):
every mistake is one line and exit status 2 before the reference ODE solution (a minute) is computed,
and a --cache file is used only for the mixture, noise seeds and --samples it was written for. The
probes themselves take minutes each and are not run here."""
import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def probes(monkeypatch):
    """{script name: its main}, with the reference ODE replaced by a test failure."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    with warnings.catch_warnings():  # samplers.py silences warnings when imported; keep that local
        modules = {name: importlib.import_module(name) for name in
                   ("samplers", "mixture_probe", "flip_anatomy", "start_offset", "rms_cell_spread")}

    def reference_ode(*a, **k):
        pytest.fail("the reference ODE was computed before the command line was checked")
    monkeypatch.setattr(modules["samplers"], "reference_ode", reference_ode)
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("script,argv,named", [
    ("flip_anatomy", ["--specs", "bogus:20"], "'bogus"),
    ("flip_anatomy", ["--specs", "unipc-3:20,pndm:2"], "'pndm:2'"),
    ("flip_anatomy", ["--specs", "unipc-3@nope:20"], "'nope'"),
    ("flip_anatomy", ["--specs", "unipc-3:20", "--samples", "0"], "'0'"),
    ("start_offset", ["--all", "20,x"], "'20,x'"),
    ("start_offset", ["--specs", "PNDM-PLMS[trailing]=2"], "'PNDM-PLMS[trailing]' cannot spend exactly 2"),
    ("start_offset", ["--specs", "PNDM-PLMS[sideways]=20"], "'PNDM-PLMS[sideways]'"),
    ("start_offset", ["--specs", "PNDM-PLMS[leading]=0"], "'PNDM-PLMS[leading]=0'"),
    ("start_offset", ["--specs", "unipc-3:20", "--samples", "0"], "'0'"),
    ("start_offset", [], "--specs"),
    ("rms_cell_spread", ["--nfe", "20", "--diffkit", "unipc-3", "--diffusers", "PNDM-PLMS[nope]"],
     "'PNDM-PLMS[nope]'"),
    ("rms_cell_spread", ["--nfe", "2", "--diffkit", "unipc-3", "--diffusers", "PNDM-PLMS[trailing]"],
     "'PNDM-PLMS[trailing]' cannot spend exactly 2"),
    ("rms_cell_spread", ["--nfe", "20", "--all", "--samples", "0"], "'0'"),
    ("rms_cell_spread", ["--nfe", "x", "--all"], "'x'"),
    ("rms_cell_spread", ["--nfe", "20", "--all", "--diffkit", "unipc-3"], "--all"),
])
def test_bad_input_is_one_line_before_the_reference(probes, capsys, script, argv, named):
    with pytest.raises(SystemExit) as code:
        probes[script].main(["--mixture", "1", *argv])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert named in err, err


def test_a_cache_is_used_only_for_what_it_was_written_for(probes, monkeypatch, tmp_path):
    """A cache of 2 samples per seed read with --samples 3 used to end in a RuntimeError; one of
    another mixture of the same dimension was used silently."""
    probe, bench = probes["mixture_probe"], probes["samplers"]
    cache = tmp_path / "ref.pt"
    monkeypatch.setattr(bench, "reference_ode", lambda eps_fn, schedule, x_T: x_T * 2)
    x_T = torch.ones(6, 8, dtype=torch.float64)
    first = probe.reference(cache, 1, 2, None, None, x_T)
    monkeypatch.setattr(bench, "reference_ode", lambda *a: pytest.fail("recomputed though cached"))
    assert torch.equal(probe.reference(cache, 1, 2, None, None, x_T), first)
    with pytest.raises(probe.DiffkitError, match=r"ref\.pt holds the reference of .*'samples': 2.*'samples': 3"):
        probe.reference(cache, 1, 3, None, None, torch.ones(9, 8, dtype=torch.float64))
    monkeypatch.setitem(bench.MIXTURES[1], "seed", 5)  # another 8-d mixture
    with pytest.raises(probe.DiffkitError, match=r"'seed': 1.*'seed': 5"):
        probe.reference(cache, 1, 2, None, None, x_T)
    torch.save(first, cache)  # a cache of the earlier scripts: a bare tensor, no record of its mixture
    with pytest.raises(probe.DiffkitError, match="an older cache"):
        probe.reference(cache, 1, 2, None, None, x_T)
