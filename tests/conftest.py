import contextlib
import os

import pytest
import torch

# One thread for torch and BLAS: the suite is many small ops, where a second thread on 2 shared
# cores costs more than it gains (measured: a tiny conv 0.2 ms on 1 thread vs 39 ms on 2 under
# load); results do not depend on the thread count.
torch.set_num_threads(1)

SHARED_DATA = os.environ.get("DIFFKIT_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


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


@pytest.fixture
def assert_same_training_state():
    """``check(checkpoint_a, checkpoint_b, step)``: both checkpoints are at ``step`` and their
    weights, EMA and optimiser state are bitwise equal (exact-resume tests)."""
    from diffkit import checkpoint as ckpt

    def check(path_a, path_b, step):
        a, meta_a = ckpt.load_checkpoint(path_a)
        b, meta_b = ckpt.load_checkpoint(path_b)
        assert meta_a["step"] == meta_b["step"] == step
        for key in a:
            if key.startswith(("model.", "ema.", "optim.")):
                assert torch.equal(a[key], b[key]), key
    return check
