"""Training loop, checkpoints and exact resume on a tiny model (seconds on the CPU)."""
import json
import os
import pickle

import pytest
import torch

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.config import TrainConfig
from diffkit.data import InMemoryImageDataset
from diffkit.training import Trainer, learning_rate

TINY = {"dataset": "digits", "img_size": 8, "channel": 16, "channel_mult": [1, 2], "attn": [1],
        "num_res_blocks": 1, "dropout": 0.1, "batch_size": 8, "lr": 1e-3, "max_steps": 6,
        "ema_decay": 0.9, "log_every": 1, "device": "cpu", "deterministic": True, "num_heads": 1}


def tiny_dataset(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    return InMemoryImageDataset(images, torch.arange(n) % 4, num_classes=4)


def make_cfg(tmp_path, **over):
    d = dict(TINY, save_weight_dir=str(tmp_path / "ckpt"), sampled_dir=str(tmp_path / "samples"))
    d.update(over)
    return TrainConfig.from_dict(d)


def test_learning_rate_follows_the_seed_warmup_and_cosine():
    cfg = TrainConfig.from_dict({**TINY, "lr": 1e-4, "multiplier": 2.0, "warmup_fraction": 0.1})
    assert learning_rate(0, 1000, cfg) == pytest.approx(1e-4)
    assert learning_rate(50, 1000, cfg) == pytest.approx(1.5e-4)
    assert learning_rate(100, 1000, cfg) == pytest.approx(2e-4)
    assert learning_rate(550, 1000, cfg) == pytest.approx(1e-4)
    assert learning_rate(1000, 1000, cfg) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("grad_clip", [1e-4, 1e4, None])
def test_gradients_reach_the_optimiser_clipped_to_grad_clip(tmp_path, grad_clip):
    """g * min(1, grad_clip / (||g|| + 1e-6)) (Pascanu et al. 2013; torch's clip_grad_norm_): a
    small grad_clip scales the gradient to that norm, a large one or none leaves it as computed."""
    tr = Trainer(make_cfg(tmp_path, max_steps=1, dropout=0.0, grad_clip=grad_clip), tiny_dataset(), progress=False)
    seen = {}

    def step(*args, **kwargs):  # the gradients as AdamW gets them, and the same backward pass unclipped
        seen["clipped"] = [p.grad.clone() for p in tr.model.parameters()]
    tr.optimizer.step = step
    batch = next(tr._epoch_batches(0))
    gen_state = tr.generator.get_state()
    tr.train_step(batch)
    tr.generator.set_state(gen_state)
    tr.optimizer.zero_grad(set_to_none=True)
    tr._micro_batch_loss(*batch[0]).backward()
    raw = [p.grad for p in tr.model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    factor = min(1.0, grad_clip / (float(norm) + 1e-6)) if grad_clip else 1.0
    assert (factor < 1.0) == (grad_clip == 1e-4)
    for got, want in zip(seen["clipped"], raw):
        torch.testing.assert_close(got, want * factor, rtol=1e-5, atol=1e-12)


def test_training_reduces_loss_on_a_fixed_batch(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=1, dropout=0.0)
    tr = Trainer(cfg, tiny_dataset(), progress=False)
    images = torch.stack([tiny_dataset()[i][0] for i in range(8)])
    labels = torch.zeros(8, dtype=torch.long)
    for g in tr.optimizer.param_groups:
        g["lr"] = 1e-3

    def loss_now():
        tr.generator.manual_seed(123)
        with torch.no_grad():
            return tr._micro_batch_loss(images, labels).item()
    before = loss_now()
    for _ in range(30):
        tr.generator.manual_seed(123)
        loss = tr._micro_batch_loss(images, labels)
        tr.optimizer.zero_grad()
        loss.backward()
        tr.optimizer.step()
    assert loss_now() < 0.7 * before


@pytest.mark.real_plots  # checks the run's loss_curve.png
def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=2)
    tr = Trainer(cfg, tiny_dataset(), progress=False)
    tr.run()
    tensors, meta = ckpt.load_checkpoint(tmp_path / "ckpt" / "latest.safetensors")
    for name, value in tr.model.state_dict().items():
        assert torch.equal(tensors[f"model.{name}"], value), name
    assert meta["step"] == 2 and meta["config"]["channel"] == 16
    # the data scale travels with the checkpoint to the samplers' logsnr_graded grid
    from diffkit.data import data_scale
    from diffkit.loading import load_denoiser
    assert meta["data_scale"] == tr.data_scale == data_scale(tr.dataset) > 0
    assert load_denoiser(tmp_path / "ckpt" / "latest.safetensors").data_scale == meta["data_scale"]
    # sampling loads the network in the layout preferred for its precision (bf16 on the CPU:
    # channels_last with diffkit's kernels, contiguous without)
    from diffkit.models.layers import preferred_memory_format
    assert load_denoiser(tmp_path / "ckpt" / "latest.safetensors").model.memory_format is torch.channels_last
    bf16 = load_denoiser(tmp_path / "ckpt" / "latest.safetensors", mixed_precision="bf16").model
    layout = preferred_memory_format("cpu", "bf16")
    assert bf16.memory_format is layout and bf16.input_conv.weight.is_contiguous(memory_format=layout)
    assert (tmp_path / "ckpt" / "loss_curve.png").exists() and (tmp_path / "ckpt" / "train_log.csv").exists()


@pytest.mark.parametrize("precision,memory_format", [("no", "auto"), ("bf16", "auto"), ("bf16", "contiguous")])
def test_resume_equals_uninterrupted_bitwise(tmp_path, precision, memory_format, assert_same_training_state):
    """Stop at step 3 of 7 (mid-epoch: 40 images / batch 8 = 5 steps per epoch), resume, and
    reach weights, EMA and optimiser state equal to an uninterrupted run."""
    full = Trainer(make_cfg(tmp_path / "a", max_steps=7, mixed_precision=precision, memory_format=memory_format),
                   tiny_dataset(), progress=False)
    full.run()
    part = Trainer(make_cfg(tmp_path / "b", max_steps=7, mixed_precision=precision, memory_format=memory_format),
                   tiny_dataset(), progress=False)
    part.run(stop_at=3)
    resumed = Trainer(make_cfg(tmp_path / "b", max_steps=7, mixed_precision=precision, memory_format=memory_format,
                               training_load_weight=str(tmp_path / "b" / "ckpt" / "latest.safetensors")),
                      tiny_dataset(), progress=False)
    resumed.run()
    assert_same_training_state(tmp_path / "a" / "ckpt" / "latest.safetensors",
                               tmp_path / "b" / "ckpt" / "latest.safetensors", 7)


def test_corrupt_and_truncated_checkpoints_are_refused(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(100.0)}, {"step": 1})
    data = bytearray(path.read_bytes())
    (tmp_path / "trunc.safetensors").write_bytes(bytes(data[:-50]))
    data[-10] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(data))
    for name in ["trunc.safetensors", "flip.safetensors"]:  # noqa: B007
        with pytest.raises(DiffkitError, match="corrupt|truncated|checksum"):
            ckpt.load_checkpoint(tmp_path / name)
    assert ckpt.load_checkpoint(path)[1] == {"step": 1}


def test_a_flipped_bit_in_the_metadata_is_refused(tmp_path):
    """The step, learning rate or config live in the header's JSON: a bit flipped there (step 3 -> 7)
    must fail like one in a weight. A file without the metadata checksum (older diffkit) still loads."""
    import struct

    path = ckpt.save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(4.0)}, {"step": 3, "lr": 1e-4})
    data = path.read_bytes()
    flipped = data.replace(b'\\"step\\": 3', b'\\"step\\": 7')
    assert flipped != data and len(flipped) == len(data)
    (tmp_path / "flip.safetensors").write_bytes(flipped)
    with pytest.raises(DiffkitError, match="fails the checksum of its metadata"):
        ckpt.load_checkpoint(tmp_path / "flip.safetensors")
    # an older file: the same header without metadata_sha256
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    del header["__metadata__"]["metadata_sha256"]
    text = json.dumps(header).encode()
    (tmp_path / "old.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    assert ckpt.load_checkpoint(tmp_path / "old.safetensors")[1] == {"step": 3, "lr": 1e-4}


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_legacy_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "ckpt_199.pt"
    with open(path, "wb") as f:
        pickle.dump({"weight": evil}, f)
    with pytest.raises(DiffkitError, match="refusing"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"layer.weight": torch.ones(2)}, good)
    assert torch.equal(ckpt.load_checkpoint(good)[0]["layer.weight"], torch.ones(2))


def test_unwritable_output_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        if os.access(target, os.W_OK):  # root ignores modes: answer as a read-only folder does
            import errno
            import tempfile

            def refuse(*a, **k):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(DiffkitError, match="cannot write|could not write"):
            ckpt.save_checkpoint(target / "x.safetensors", {"w": torch.ones(1)}, {})
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o700)


def test_resumed_optimizer_state_gets_the_parameters_layout():
    """Checkpoints store Adam's moments contiguous; a channels_last conv weight must get them back
    with its own strides (torch's fused AdamW updates wrongly otherwise), values unchanged."""
    from diffkit.checkpoint import optimizer_from_tensors, optimizer_to_tensors
    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters(), lr=1e-3)
    conv(torch.randn(2, 4, 8, 8)).square().mean().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    tensors = {k: v.contiguous() for k, v in tensors.items()}  # what safetensors gives back
    fresh = torch.optim.AdamW(conv.parameters(), lr=1e-3)
    optimizer_from_tensors(fresh, tensors, meta)
    for p in conv.parameters():
        for name in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][name].stride() == p.stride()
            assert torch.equal(fresh.state[p][name], opt.state[p][name])
    assert not conv.weight.is_contiguous()  # the case the check is about


@pytest.mark.parametrize("precision,memory_format,expected", [
    ("no", "auto", torch.channels_last), ("bf16", "auto", None), ("bf16", "contiguous", torch.contiguous_format),
    ("bf16", "channels_last", torch.channels_last), ("no", "contiguous", torch.contiguous_format)])
def test_the_network_computes_in_the_layout_preferred_for_its_precision(tmp_path, precision, memory_format,
                                                                          expected):
    """``memory_format = "auto"``: channels_last in fp32 on the CPU, and under bf16 autocast where
    diffkit's kernels are built (contiguous without them; docs/performance.md); a named layout is
    forced; the EMA copy and AdamW's moments share the weights' layout (the fused kernel needs it),
    and the optimiser is diffkit's FusedAdamW (no gradient copies for channels_last weights)."""
    from diffkit.models.layers import preferred_memory_format
    from diffkit.optim import FusedAdamW
    expected = expected or preferred_memory_format("cpu", precision)
    tr = Trainer(make_cfg(tmp_path, max_steps=1, mixed_precision=precision, memory_format=memory_format),
                 tiny_dataset(), progress=False)
    tr.run()
    weights = [p for p in tr.model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1]
    assert weights and tr.model.memory_format is expected and isinstance(tr.optimizer, FusedAdamW)
    for p in weights:
        assert p.is_contiguous(memory_format=expected), p.shape
        assert tr.optimizer.state[p]["exp_avg"].stride() == p.stride()
    for p, shadow in zip(tr.model.parameters(), tr.ema.params):
        assert shadow.stride() == p.stride()


def test_ranks_above_0_draw_their_own_dropout_masks_from_the_step(tmp_path):
    """Under DDP every rank used to seed the global RNG alike, so all ranks dropped the same units.
    A rank > 0 now reseeds from (seed, rank, step) before each step: its masks differ from rank 0's
    and do not depend on what ran before (a resumed rank draws the same masks)."""
    import dataclasses

    from diffkit.training import rank_step_seed

    def trainer(rank):
        cfg = TrainConfig.from_dict({**TINY, "dropout": 0.5, "save_weight_dir": str(tmp_path / f"r{rank}")})
        t = Trainer(cfg, tiny_dataset(), progress=False)
        t.dist = dataclasses.replace(t.dist, rank=rank)  # world size 1: only the seeding differs
        return t

    images = torch.rand(8, 1, 8, 8) * 2 - 1
    labels = torch.zeros(8, dtype=torch.long)
    weights = {}
    for name, rank, warm in (("rank0", 0, 0), ("rank1", 1, 0), ("rank1-after-other-draws", 1, 5)):
        t = trainer(rank)
        for step in range(3):  # from the second step on the zero-initialised convolutions see the masks
            torch.rand(warm)  # other use of the global RNG between steps
            t.train_step([(images, labels)])
            t.step += 1
        weights[name] = torch.cat([p.detach().flatten() for p in t.model.parameters()])
    assert not torch.equal(weights["rank0"], weights["rank1"])
    torch.testing.assert_close(weights["rank1"], weights["rank1-after-other-draws"], rtol=0, atol=0)
    assert rank_step_seed(0, 1, 5) != rank_step_seed(0, 2, 5) != rank_step_seed(0, 1, 6)
