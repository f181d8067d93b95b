import contextlib
import os

import pytest
import torch

# One thread for torch and BLAS: the suite is many small ops, where a second thread on 2 shared
# cores costs more than it gains (measured: a tiny conv 0.2 ms on 1 thread vs 39 ms on 2 under
# load); results do not depend on the thread count.
torch.set_num_threads(1)

SHARED_DATA = os.environ.get("DIFFKIT_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


try:  # the property-based tests draw the same examples on every CI run (a failure is reproducible)
    from hypothesis import settings as _hypothesis_settings
    _hypothesis_settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:
    pass

# Under CI (no GPU) the only tests that may skip are those that need CUDA: a skip for any other
# reason (the CPU kernels failed to build, diffusers failed to import, the data folder is not
# beside the checkout) would hide a whole area of the suite behind a green run.
CI_ALLOWED_SKIPS = ("CUDA",)


def _ci_must_not_skip(report):
    if not os.environ.get("CI") or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(word in reason for word in CI_ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where it must run (only CUDA tests may skip there): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _ci_must_not_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _ci_must_not_skip(outcome.get_result())


def rounded_output(net, dtype: torch.dtype):
    """``net`` with its output rounded to ``dtype`` (float16 / bfloat16) and handed back in the
    input's dtype: an exact model stored in half precision, for the reduced-precision tests
    (``from conftest import rounded_output``). Gradients flow through the rounding."""
    return lambda x, t, **cond: net(x, t, **cond).to(dtype).to(x.dtype)


def _not_drawn(*_args, **_kwargs):
    """Stands for diffkit's matplotlib figures (loss curve, series panels, tables): nothing is written."""
    return None


# Drawing with matplotlib is most of a tiny run's time: the loss curve every finished training run writes
# (0.1-0.3 s; a 3-step run trains in about as long), the 16 panels of a sampled time series (1-2 s each) and
# the plot of each experiment table (0.5 s).
# In this process the suite does not draw them, except in the tests marked ``real_plots`` and inside
# ``with real_plots():`` (for a module fixture): those check the figures, and so cover the drawing and the
# code that calls it. A test that looks for loss_curve.png, a series PNG or a table's PNG needs the marker
# (subprocess runs always draw).
_PLOTS = (("diffkit.training", "plot_loss_curve"), ("diffkit.timeseries", "plot_series"),
          ("diffkit.experiments", "plot_table"))


def _plot_functions():
    """[(module, name, the real function)] of the figures the suite does not draw."""
    import importlib
    out = []
    for module_name, name in _PLOTS:
        module = importlib.import_module(module_name)
        out.append((module, name, getattr(module, name)))
    return out


_REAL_PLOTS = []


@pytest.fixture(autouse=True, scope="session")
def _figures_not_drawn():
    _REAL_PLOTS[:] = _plot_functions()
    with pytest.MonkeyPatch.context() as patch:
        for module, name, _ in _REAL_PLOTS:
            patch.setattr(module, name, _not_drawn)
        yield


@contextlib.contextmanager
def real_plots():
    """Draw diffkit's figures inside the block (``from conftest import real_plots``; a module fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        for module, name, real in _REAL_PLOTS:
            patch.setattr(module, name, real)
        yield


@pytest.fixture(autouse=True)
def _real_plots_when_marked(request):
    """Tests marked ``real_plots`` draw diffkit's figures."""
    if request.node.get_closest_marker("real_plots") is None:
        yield
    else:
        with real_plots():
            yield


@pytest.fixture(autouse=True, scope="session")
def single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=1, user_api="blas")
    except ImportError:
        limits = contextlib.nullcontext()
    with limits:
        yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Keep torch single-threaded even if a test changed it."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def shared_data():
    """Path of the real test data (MNIST, Fashion-MNIST IDX files); skip if absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A training checkpoint of test_evaluation's TINY config (2 steps on the embedded digits)."""
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    from test_evaluation import TINY
    root = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig.from_dict({**TINY, "save_weight_dir": str(root / "ckpt"), "sampled_dir": str(root / "s")})
    Trainer(cfg, progress=False, log=lambda *_: None).run()
    return root / "ckpt" / "latest.safetensors"


@pytest.fixture(scope="session")
def refiner_combo(tmp_path_factory):
    """test_refiner_combos' tiny SD-XL base / refiner / ControlNet / IP-Adapter / LoRA folders and pipelines, built
    once for it and test_refiner_more."""
    from test_refiner_combos import make_combo
    return make_combo(tmp_path_factory.mktemp("refiner_combos"))


@pytest.fixture
def assert_same_training_state():
    """``check(checkpoint_a, checkpoint_b, step)``: both checkpoints are at ``step`` and their
    weights, EMA, optimiser state and (consistency training with an EMA target) target network are
    bitwise equal (exact-resume tests); both hold the same keys."""
    from diffkit import checkpoint as ckpt

    def check(path_a, path_b, step):
        a, meta_a = ckpt.load_checkpoint(path_a)
        b, meta_b = ckpt.load_checkpoint(path_b)
        assert meta_a["step"] == meta_b["step"] == step
        assert sorted(a) == sorted(b)
        for key in a:
            if key.startswith(("model.", "ema.", "optim.", "target.")):
                assert torch.equal(a[key], b[key]), key
    return check
