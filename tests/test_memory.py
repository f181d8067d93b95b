"""Memory-aware batch sizes (diffkit.memory): the measured peaks against hand-counted bytes, the
batch rule, the out-of-memory retry, and ``diffkit sample --batch-size auto`` end to end."""
import pytest
import torch

from diffkit.cli import main
from diffkit.errors import DiffkitError
from diffkit.memory import (SAMPLER_STATE_COPIES, LiveTensorBytes, auto_batch_size, available_bytes,
                            batches_with_oom_retry, peak_bytes)


def test_peak_counts_new_storages_and_their_frees():
    x = torch.zeros(1000)  # existed before: not counted

    def work():
        a = x * 2             # +4000 -> 4000
        b = a + 1             # +4000 -> 8000
        del a                 # -4000 -> 4000
        b.view(10, 100).mul_(3)  # a view and an in-place op: +0
        c = torch.cat([b, b])  # +8000 -> 12000 (the peak)
        del b, c              # -> 0
        return torch.ones(3)  # +12 (kept alive by the caller until the end)

    with LiveTensorBytes() as tracker:
        work()
    assert tracker.peak == 12_000
    # + each operator's inputs as its scratch: made inside, the cat's b (live 12000 + 4000); made
    # before, x (4000)
    assert tracker.bound == peak_bytes(work, "cpu") == 16_000 + 4000
    with LiveTensorBytes() as tracker:
        y = x + 1
        assert tracker.live == 4000
        del y
    assert tracker.live == 0 and tracker.peak == 4000 and tracker.bound == 4000 + 4000  # x + 1: x is the input


def test_peak_of_a_network_forward_is_its_two_largest_live_activations():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))
    for n in (1, 3, 8):
        x = torch.randn(n, 10)
        with torch.no_grad(), LiveTensorBytes() as tracker:
            net(x)
        # the ReLU's input and output, (n, 20) float32 each, are alive together; then (n, 20) + (n, 5)
        assert tracker.peak == 2 * n * 20 * 4
        # the bound: live after each operator + its inputs made inside: Linear 1: (n, 20);
        # ReLU: 2 (n, 20) + (n, 20); Linear 2: (n, 20) + (n, 5) + (n, 20); plus the largest inputs
        # made before: Linear 1's x (n, 10), W (20, 10) and b (20)
        assert tracker.bound == 4 * (max(20 * n, 60 * n, 45 * n) + 10 * n + 220)


def _probe_of(per_sample: int, fixed: int):
    def probe(n):
        scratch = torch.empty(fixed // 4)
        out = torch.empty(n * per_sample // 4)
        return scratch.sum() + out.numel()
    return probe


def test_auto_batch_is_the_largest_that_fits_the_share_of_free_memory():
    probe = _probe_of(per_sample=4000, fixed=2000)
    # per sample: 4000 measured + the sampler's state (8 float32 copies of 25 elements = 800)
    batch = auto_batch_size(probe, "cpu", limit=10_000, sample_numel=25, available=1_000_000, share=0.5, cap=10_000)
    assert batch == (500_000 - 2000) // (4000 + SAMPLER_STATE_COPIES * 4 * 25) == 103
    assert auto_batch_size(probe, "cpu", limit=40, sample_numel=25, available=1_000_000, share=0.5, cap=10_000) == 40
    assert auto_batch_size(probe, "cpu", limit=500, sample_numel=25, available=1_000_000, share=0.5, cap=16) == 16
    with pytest.raises(DiffkitError, match="not enough memory"):
        auto_batch_size(probe, "cpu", limit=8, sample_numel=25, available=5000, share=0.5)
    with pytest.raises(DiffkitError, match="share"):
        auto_batch_size(probe, "cpu", limit=8, sample_numel=25, available=10**9, share=1.5)


def test_available_memory_of_this_cpu_is_known_and_positive():
    free = available_bytes("cpu")
    assert free is not None and free > 0


def test_out_of_memory_halves_the_batch_and_draws_the_same_samples(capsys):
    def generate(start, n):
        if n > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return (torch.arange(start, start + n),)

    batches = batches_with_oom_retry(generate, 10, 8)
    assert batches.batch_size == 8
    got = list(batches)
    assert [start for start, _ in got] == [0, 2, 4, 6, 8]  # 8 -> 4 -> 2: the batch halves until it fits
    assert batches.batch_size == 2  # the size it ended with
    assert torch.equal(torch.cat([chunk for _, chunk in got]), torch.arange(10))
    assert "out of memory with a batch of 8; retrying with 4" in capsys.readouterr().err

    def never(start, n):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    with pytest.raises(DiffkitError, match="batch of one"):
        list(batches_with_oom_retry(never, 3, 1))


TINY = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
        "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "sample_steps=3", "--set", "num_heads=1"]


def test_sample_with_auto_batch_equals_fixed_batches(tmp_path, capsys, monkeypatch):
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", "--device", "cpu",
                 "--no-sample", *TINY]) == 0
    ck = str(tmp_path / "run" / "checkpoints" / "latest.safetensors")
    capsys.readouterr()
    import diffkit.memory as memory
    monkeypatch.setattr(memory, "MAX_AUTO_BATCH", {"cpu": 4})  # so that 7 samples take two batches
    from diffkit.commands.sample import sample_to_files
    auto = sample_to_files(ck, sampler="dpm-solver++-2m", steps=4, num=7, out=tmp_path / "a.png", progress=False)
    assert ("(7 samples, dpm-solver++-2m, 4 network evaluations per sample (8 calls in 2 batches))"
            in capsys.readouterr().out)  # 2 batches x 4 steps
    fixed = sample_to_files(ck, sampler="dpm-solver++-2m", steps=4, num=7, out=tmp_path / "b.png", progress=False,
                            batch_size=7)
    torch.testing.assert_close(auto, fixed, atol=1e-5, rtol=0)
    assert main(["sample", "--checkpoint", ck, "--batch-size", "auto", "--steps", "2", "--num", "3",
                 "--out", str(tmp_path / "c.png"), "--no-progress"]) == 0
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", ck, "--batch-size", "many"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'many'" in err and "auto" in err


def test_a_kernels_persistent_workspace_counts_by_what_each_call_uses():
    """A buffer allocated once at a floor size (Winograd's workspaces) and used by a network only
    from 2 samples on looked like the second sample's cost (the whole floor: 65 MiB for an MNIST
    network); what each call uses of it (growing with the batch) is counted instead."""
    from diffkit.memory import note_workspace_use, probe_costs, register_workspace
    floor = torch.empty(4 << 20)  # 16 MiB, allocated before any probe
    register_workspace(floor)
    per_image = 1 << 16  # bytes of workspace one image uses

    def probe(n):
        x = torch.zeros(n, 1000)  # 4000 bytes per image
        if n >= 2:  # the path takes the workspace from 2 images on
            note_workspace_use("w", n * per_image)
            x = x + floor[: n * per_image // 4].sum()
        return x * 2
    fixed, per_sample = probe_costs(probe, "cpu", sample_numel=0)
    assert per_sample < 4 * per_image, per_sample  # about per_image + the 4000-byte activations, not 16 MiB
    assert per_sample >= per_image
