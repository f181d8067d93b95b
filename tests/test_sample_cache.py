"""Sample batches kept on disk (diffkit.sample_cache): a stopped run resumes with the same samples."""
import json

import pytest
import torch

from diffkit.evaluation import generate_samples
from diffkit.loading import load_denoiser
from diffkit.sample_cache import SampleCache
from test_evaluation import main, one_line_error


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


class StopAfter:
    """Wraps a denoiser's network and raises on call number ``calls + 1`` (a run killed mid-way)."""

    def __init__(self, net, calls):
        self.net, self.calls = net, calls

    def __call__(self, *args, **kwargs):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.net(*args, **kwargs)


def draw(denoiser, cache, **kw):
    denoiser.reset_nfe()
    images = generate_samples(denoiser, 10, sampler="ddim", steps=4, seed=3, batch_size=4, cache=cache,
                              eta=1.0, **kw)
    return images, denoiser.nfe


def test_a_stopped_run_resumes_with_the_samples_of_an_uninterrupted_one(checkpoint, tmp_path):
    d = load_denoiser(checkpoint)
    plain, plain_nfe = draw(d, None)
    assert plain_nfe == 3 * 4  # three batches (4, 4, 2) of 4 steps

    stopped = load_denoiser(checkpoint)
    stopped.net = StopAfter(stopped.net, calls=4 + 2)  # dies inside the second batch
    cache = SampleCache(tmp_path, stopped)
    with pytest.raises(KeyboardInterrupt):
        draw(stopped, cache)
    assert cache.saved == 1
    assert [p.name for p in tmp_path.glob("*/samples-*")] == ["samples-0000000-00004-seed3.safetensors"]
    assert not list(tmp_path.glob("*/.*.tmp"))  # no partial file from the killed batch

    resumed = load_denoiser(checkpoint)
    cache = SampleCache(tmp_path, resumed)
    images, nfe = draw(resumed, cache)
    assert (cache.loaded, cache.saved) == (1, 2)
    assert torch.equal(images, plain)  # stochastic sampler (eta = 1): exactly the same samples
    assert nfe == plain_nfe  # a reused batch counts the network calls it cost

    again = SampleCache(tmp_path, resumed)
    images, _ = draw(resumed, again)
    assert (again.loaded, again.saved) == (3, 0) and torch.equal(images, plain)


def test_other_settings_or_weights_do_not_reuse_batches(checkpoint, tmp_path):
    d = load_denoiser(checkpoint)
    draw(d, SampleCache(tmp_path, d))
    other_eta = SampleCache(tmp_path, d)
    d.reset_nfe()
    generate_samples(d, 10, sampler="ddim", steps=4, seed=3, batch_size=4, cache=other_eta, eta=0.0)
    assert other_eta.loaded == 0

    changed = load_denoiser(checkpoint)
    with torch.no_grad():
        next(changed.model.parameters()).add_(1e-3)
    other_weights = SampleCache(tmp_path, changed)
    draw(changed, other_weights)
    assert other_weights.loaded == 0

    bf16 = load_denoiser(checkpoint, mixed_precision="bf16")
    other_precision = SampleCache(tmp_path, bf16)
    draw(bf16, other_precision)
    assert other_precision.loaded == 0
    keys = [json.loads(p.read_text()) for p in tmp_path.glob("*/key.json")]
    assert len(keys) == 4 and {k["sampling"].get("eta") for k in keys} == {None, 1.0}  # eta 0 is the default


def test_a_damaged_batch_file_is_sampled_again(checkpoint, tmp_path):
    d = load_denoiser(checkpoint)
    plain, _ = draw(d, SampleCache(tmp_path, d))
    first = sorted(tmp_path.glob("*/samples-*"))[0]
    first.write_bytes(first.read_bytes()[:50])
    cache = SampleCache(tmp_path, d)
    images, _ = draw(d, cache)
    assert (cache.loaded, cache.saved) == (2, 1) and torch.equal(images, plain)
    # flipped bits inside the images (the file still parses): the checksum catches them
    second = sorted(tmp_path.glob("*/samples-*"))[1]
    data = bytearray(second.read_bytes())
    data[-9] ^= 0x20
    second.write_bytes(bytes(data))
    cache = SampleCache(tmp_path, d)
    images, _ = draw(d, cache)
    assert (cache.loaded, cache.saved) == (2, 1) and torch.equal(images, plain)


def test_experiment_cache_dir_reuses_batches_through_the_cli(checkpoint, tmp_path, capsys):
    evaluator = tmp_path / "ev.safetensors"
    assert main(["train-evaluator", "--dataset", "digits", "--img-size", 8, "--epochs", 1,
                 "--out", evaluator, "--device", "cpu"]) == 0
    common = ["experiment", "ddim-table", "--checkpoint", checkpoint, "--etas", "0,1", "--steps", "2",
              "--num", 6, "--batch-size", 4, "--metric", "confidence", "--evaluator", evaluator,
              "--device", "cpu"]
    cache = ["--cache-dir", tmp_path / "cache"]
    assert main([*common, *cache, "--out", tmp_path / "a"]) == 0
    first = json.loads((tmp_path / "a" / "ddim_table.json").read_text())
    files = sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*/samples-*"))
    assert len(files) == 2 * 2  # two cells, two batches each
    assert main([*common, *cache, "--out", tmp_path / "b"]) == 0
    second = json.loads((tmp_path / "b" / "ddim_table.json").read_text())
    assert second["values"] == first["values"] and second["nfe"] == first["nfe"] == [[2], [2]]
    assert any("0 batches reused, 4 sampled" in note for note in first["notes"])
    assert any("4 batches reused, 0 sampled" in note for note in second["notes"])
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*/samples-*")) == files  # not rewritten
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, [*common, "--cache-dir", blocker / "sub", "--out", tmp_path / "c"],
                   "sample cache directory", str(blocker / "sub"))
    # a ledger where the table's JSON goes would be replaced by it: refused before any work
    one_line_error(capsys, [*common, "--ledger", tmp_path / "d" / "ddim_table.json", "--out", tmp_path / "d"],
                   "which is the score ledger")
    # a refused table leaves none of the folders it would have made
    one_line_error(capsys, [*common, "--ledger-only", "--ledger", tmp_path / "l" / "none.json",
                            "--out", tmp_path / "newx" / "tables"], "none.json")
    assert not (tmp_path / "newx").exists() and not (tmp_path / "l").exists()
    # a full disk under the cache ends the run in one line (it became every cell's note, exit 0,
    # and an empty table written over the earlier one)
    import errno
    import os

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    before = (tmp_path / "a" / "ddim_table.json").read_bytes()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fdopen", full)
        one_line_error(capsys, [*common, "--cache-dir", tmp_path / "cache2", "--out", tmp_path / "a"],
                       "No space left on device")
    assert (tmp_path / "a" / "ddim_table.json").read_bytes() == before


def test_eval_cache_dir_reuses_batches(checkpoint, tmp_path):
    evaluator = tmp_path / "ev.safetensors"
    assert main(["train-evaluator", "--dataset", "digits", "--img-size", 8, "--epochs", 1,
                 "--out", evaluator, "--device", "cpu"]) == 0
    common = ["eval", "--checkpoint", checkpoint, "--metrics", "confidence", "--evaluator", evaluator, "--num", 6,
              "--batch-size", 4, "--sampler", "ddpm", "--steps", 3, "--device", "cpu",
              "--cache-dir", tmp_path / "cache", "--no-progress"]
    assert main([*common, "--out", tmp_path / "a.json"]) == 0
    assert main([*common, "--out", tmp_path / "b.json"]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert (a["settings"]["cached_batches"], b["settings"]["cached_batches"]) == (0, 2)
    assert a["metrics"] == b["metrics"]


def test_fd_bootstrap_reads_a_conditional_tables_batches_with_their_labels(checkpoint, tmp_path, monkeypatch):
    """benchmarks/fd_bootstrap.py looks each cached batch up with the table's labels (sample i: class i mod
    K, sliced per batch as generate_samples stores them); without them a class-conditional cell is
    'not in the cache'."""
    import importlib
    from pathlib import Path

    from diffkit import DiffkitError
    from diffkit.sample_cache import open_cache
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    fd_bootstrap = importlib.import_module("fd_bootstrap")
    cache = open_cache(tmp_path / "cache", load_denoiser(checkpoint))
    settings, labels = {"sampler": "heun", "steps": 3}, torch.arange(10) % 4
    images = torch.randn(10, 1, 8, 8)
    for start in (0, 4, 8):
        cache.save(settings, start, min(4, 10 - start), 0, images[start:start + 4], labels[start:start + 4])
    torch.testing.assert_close(fd_bootstrap.cached_samples(cache, settings, 10, 4, 0, labels), images, rtol=0, atol=0)
    with pytest.raises(DiffkitError, match="samples 0.. are not in the cache"):
        fd_bootstrap.cached_samples(cache, settings, 10, 4, 0, None)
