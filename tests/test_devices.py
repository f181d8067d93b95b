"""What an accelerator needs of the code, checked on a machine without one.

PyTorch's ``meta`` device stands in for cuda/mps: tensors with shapes and dtypes but no data. A
dispatch mode records every float64 tensor made on it (mps has no float64: such code fails
there) and every host sync (a per-step sync stalls a GPU); copies from it to the CPU give zeros.
The other device rules (process groups, out of memory on mps, precision of the classifier)
are checked through the functions that decide them."""
import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import diffkit
from diffkit.errors import DiffkitError
from diffkit.samplers.registry import REGISTRY


class StandInAccelerator(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.float64 = []
        self.syncs = collections.Counter()
        self.copies_back = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == "meta" for t in inputs)
        if func is torch.ops.aten._local_scalar_dense.default and on_device:
            self.syncs["".join(traceback.format_stack(limit=6)[:2])] += 1
            return True if inputs[0].dtype == torch.bool else 0.5
        if func is torch.ops.aten._to_copy.default and on_device and kwargs.get("device") == torch.device("cpu"):
            self.copies_back += 1
            return torch.zeros(inputs[0].shape, dtype=kwargs.get("dtype") or inputs[0].dtype)  # the copy back
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "meta" and t.dtype == torch.float64:
                self.float64.append(f"{func}:\n" + "".join(traceback.format_stack(limit=7)[:-1]))
        return out


SCHEDULE = diffkit.NoiseSchedule.linear(100)


def half(x, t, **cond):
    return 0.5 * x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_every_sampler_keeps_float64_off_the_device_and_syncs_once(prediction_type):
    denoiser = diffkit.Denoiser(half, SCHEDULE, prediction_type=prediction_type)
    for name in REGISTRY:
        if REGISTRY[name].adaptive:  # ode's state lives in scipy on the CPU: it syncs at every call by design
            continue
        mode = StandInAccelerator()
        with mode:
            diffkit.sample(denoiser, (2, 1, 4, 4), name, steps=4, seed=0, device="meta", progress=False)
        assert not mode.float64, (name, mode.float64[0])
        assert sum(mode.syncs.values()) <= 1, (name, mode.syncs)  # the noise's finiteness check, once


def test_times_given_on_the_device_are_read_on_the_cpu():
    """Device time tensors (a caller's, or a diffusers scheduler's set_timesteps(device=...)) are
    copied to the CPU before the float64 cast: the denoiser, thresholding, guidance, the losses
    and the VLB terms."""
    from diffkit import losses
    from diffkit.denoiser import ThresholdedDenoiser
    from diffkit.likelihood import variational_bound
    from diffkit.noise import generators_from_seed
    from diffkit.guidance import ClassifierFreeGuidance

    x = torch.randn(2, 1, 4, 4, device="meta")
    t = torch.tensor([3.0, 40.0], device="meta")
    denoiser = diffkit.Denoiser(half, SCHEDULE)
    guided = ClassifierFreeGuidance(denoiser, 2.0, null_class=3)
    mode = StandInAccelerator()
    with mode:
        denoiser(x, t)
        ThresholdedDenoiser(denoiser, "dynamic")(x, t)
        guided(x, t, y=torch.tensor([0, 1], device="meta"))
        losses.min_snr_weight(SCHEDULE, t, 5.0, "epsilon")
        variational_bound(denoiser, x, timesteps=[0, 50, 99], generator=generators_from_seed(0, 2))
    assert not mode.float64, mode.float64[0]


def test_network_device_looks_through_wrappers():
    from diffkit.denoiser import ThresholdedDenoiser, network_device
    from diffkit.guidance import ClassifierFreeGuidance

    net = torch.nn.Conv2d(1, 1, 1).to("meta")
    denoiser = diffkit.Denoiser(lambda x, t: net(x), SCHEDULE)
    denoiser.model = net
    wrapped = ThresholdedDenoiser(ClassifierFreeGuidance(denoiser, 1.0, null_class=2), "clip")
    assert network_device(wrapped) == torch.device("meta")
    assert network_device(diffkit.Denoiser(net, SCHEDULE)) == torch.device("meta")  # .net, no .model
    assert network_device(diffkit.Denoiser(half, SCHEDULE)) == torch.device("cpu")


def test_sample_moves_the_condition_and_given_noise_to_its_device():
    seen = {}

    def net(x, t, y=None):
        seen.update(x=x.device, y=y.device)
        return 0.5 * x

    denoiser = diffkit.Denoiser(net, SCHEDULE)
    with StandInAccelerator():
        diffkit.sample(denoiser, torch.randn(2, 1, 4, 4), "ddim", steps=2, device="meta", progress=False,
                       cond={"y": torch.tensor([0, 1])})
    assert seen == {"x": torch.device("meta"), "y": torch.device("meta")}


def test_distributed_training_needs_cpu_or_cuda(monkeypatch, tmp_path, capsys):
    from diffkit import distributed
    from diffkit.cli import main as cli_main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DiffkitError, match="mps has no process-group backend"):
        distributed.setup(torch.device("mps"))
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr("diffkit.config.resolve_device", lambda name: torch.device("mps"))
    assert cli_main(["train", "--nproc", "2", "--out", str(tmp_path / "run"), "--set", "batch_size=2"]) == 2
    err = capsys.readouterr().err
    assert "--nproc 2 needs device cpu (gloo) or cuda (nccl)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_mps_out_of_memory_halves_the_batch(capsys):
    """The mps allocator raises a plain RuntimeError, not torch.OutOfMemoryError."""
    from diffkit.memory import batches_with_oom_retry

    def generate(start, n):
        if n > 2:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB, other allocations: 0 B)")
        return (list(range(start, start + n)),)

    got = [values for _, values in batches_with_oom_retry(generate, 5, 4)]
    assert got == [[0, 1], [2, 3], [4]]
    assert "out of memory with a batch of 4; retrying with 2" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="another error"):
        list(batches_with_oom_retry(lambda start, n: (_ for _ in ()).throw(RuntimeError("another error")), 2, 2))


def test_classifier_guidance_runs_the_classifier_in_the_samples_precision():
    """diffkit.sample holds a bf16 denoiser's autocast open for the whole loop; the classifier's
    gradient is still taken in float32 (as with --classifier-algorithm 1)."""
    from diffkit.guidance import classifier_log_prob_grad

    torch.manual_seed(0)
    classifier_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    dtypes = []

    def classifier(x, t):
        logits = classifier_net(x)
        dtypes.append(logits.dtype)
        return logits

    x = torch.randn(2, 1, 4, 4)
    y = torch.tensor([0, 2])
    plain = classifier_log_prob_grad(classifier, x, 10.0, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = classifier_log_prob_grad(classifier, x, 10.0, y)
    assert dtypes == [torch.float32, torch.float32]
    torch.testing.assert_close(under_autocast, plain, rtol=0, atol=0)


def test_a_denoiser_call_with_per_sample_times_copies_nothing_back():
    """(B,) times (the VLB, loss-aware schedules, guidance halves): alpha and sigma are read on the
    CPU copy the network's times are made from (they went to the device and back, a sync per call)."""
    denoiser = diffkit.Denoiser(half, SCHEDULE)
    x = torch.randn(2, 1, 4, 4, device="meta")
    mode = StandInAccelerator()
    with mode:
        denoiser(x, torch.tensor([3.0, 40.0]))
    assert mode.copies_back == 0 and sum(mode.syncs.values()) == 0 and not mode.float64


def test_a_training_step_keeps_its_loss_total_off_float64_on_the_device(tmp_path):
    """The step's loss is summed over micro-batches on the device without a sync; in float64 that
    sum failed on mps (the first step of every mps run)."""
    from diffkit.config import TrainConfig
    from diffkit.training import Trainer
    cfg = TrainConfig.from_dict({"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2],
                                 "attn": [1], "num_res_blocks": 1, "batch_size": 4, "max_steps": 2, "device": "cpu",
                                 "num_heads": 1, "grad_accum": 2, "save_weight_dir": str(tmp_path / "c"),
                                 "sampled_dir": str(tmp_path / "s")})
    trainer = Trainer(cfg, progress=False, log=lambda *_: None)
    trainer._micro_batch_loss = lambda images, labels: torch.ones((), device="meta", requires_grad=True) * 0.5
    mode = StandInAccelerator()
    with mode:
        loss = trainer.train_step([(None, None), (None, None)])
    assert loss == 0.5 and not mode.float64
