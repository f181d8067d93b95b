"""Fine-tuning (diffkit train --init-from) and LoRA adapters (diffkit.lora; Hu et al. 2021, eq. 3)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.commands.train import fine_tune_fields
from diffkit.config import TrainConfig
from diffkit.data import InMemoryImageDataset
from diffkit.errors import DiffkitError
from diffkit.loading import export_weights, load_model
from diffkit.lora import add_lora, adapt_layer, lora_layers, merge_lora
from diffkit.models.unet import UNet, UNetConfig
from diffkit.training import Trainer
from test_cli_errors import one_line_error
from test_training import TINY, tiny_dataset

NET = dict(channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, img_size=8, in_channels=1,
           num_heads=1)
TINY_ARGS = ["--set", "img_size=8", "--set", "channel=16", "--set", "channel_mult=[1,2]", "--set", "attn=[1]",
             "--set", "num_res_blocks=1", "--set", "batch_size=8", "--set", "num_heads=1"]


def _unet(seed=0, **over):
    torch.manual_seed(seed)
    net = UNet(UNetConfig(**{**NET, **over})).eval()
    with torch.no_grad():  # the zero-initialised output layers at random values: every path shows in the output
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return net


def _inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, 8, 8, generator=g), torch.tensor([10.0, 500.0][:batch])


def _randomise_b(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("targets", ["attention", "attention,resblock"])
def test_zero_b_gives_the_base_network_bit_for_bit(targets):
    """B = 0 at start (Hu et al. 2021, Sec. 4.1): h = W0 x + (alpha/r) B A x = W0 x exactly."""
    net = _unet()
    x, t = _inputs()
    with torch.no_grad():
        before = net(x, t)
        add_lora(net, 4, alpha=8.0, targets=targets)
        after = net(x, t)
    assert lora_layers(net)
    assert torch.equal(before, after)


def test_adapted_layers_are_the_ones_named_and_keep_their_keys():
    net = _unet()
    base_keys = set(net.state_dict())
    add_lora(net, 2)
    names = [n for n, _ in lora_layers(net)]
    assert names == ["down.2.1.qkv", "down.2.1.proj", "middle.1.qkv", "middle.1.proj", "up.0.1.qkv", "up.0.1.proj",
                     "up.1.1.qkv", "up.1.1.proj"]
    keys = list(net.state_dict())
    assert set(keys) - base_keys == {f"{n}.lora_{m}" for n in names for m in "AB"} and base_keys <= set(keys)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [k for k in keys if k not in base_keys]
    add_resblocks = add_lora(_unet(), 2, targets="resblock")
    assert {n.rsplit(".", 1)[1] for n, _ in lora_layers(add_resblocks)} == {"conv1", "conv2"}


def test_merged_weights_are_w0_plus_scaled_b_a_and_give_the_unmerged_output():
    """W = W0 + (alpha/r) B A (eq. 3); a 3x3 convolution's Delta W[o, i] = sum_k B[o, k] A[k, i] (diffusers'
    LoRACompatibleConv), written here with einsum; merged forward = unmerged forward within fp32 rounding."""
    net = add_lora(_unet(), 3, alpha=6.0, targets="attention,resblock")
    _randomise_b(net)
    x, t = _inputs()
    expected = {}
    for name, layer in lora_layers(net):
        w0, a, b = layer.weight.detach().clone(), layer.lora_A.detach(), layer.lora_B.detach()
        if a.ndim == 2:
            expected[name] = w0 + 2.0 * b @ a
        else:
            expected[name] = w0 + 2.0 * torch.einsum("ok,kihw->oihw", b[:, :, 0, 0], a)
    with torch.no_grad():
        unmerged = net(x, t)
        merge_lora(net)
        merged = net(x, t)
    assert not lora_layers(net) and not any(".lora_" in k for k in net.state_dict())
    modules = dict(net.named_modules())
    for name, w in expected.items():
        assert type(modules[name]).__name__ in ("Linear", "WinogradConv2d")
        torch.testing.assert_close(modules[name].weight, w, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged, _unet()(x, t))  # the adapters changed the function


def test_gradients_reach_only_a_and_b_as_the_closed_form_says():
    """For h = W0 x + b + s B A x and L = sum_n g_n . h_n: dL/dB = s sum_n g_n (A x_n)^T,
    dL/dA = s sum_n (B^T g_n) x_n^T; W0 and b are frozen (no gradient)."""
    torch.manual_seed(0)
    layer = adapt_layer(nn.Linear(5, 3).requires_grad_(False), 2, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x, g = torch.randn(4, 5, dtype=torch.float32), torch.randn(4, 3)
    (layer(x) * g).sum().backward()
    a, b, s = layer.lora_A.detach(), layer.lora_B.detach(), 1.5
    d_b = s * sum(torch.outer(g[n], a @ x[n]) for n in range(4))
    d_a = s * sum(torch.outer(b.T @ g[n], x[n]) for n in range(4))
    torch.testing.assert_close(layer.lora_B.grad, d_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_A.grad, d_a, rtol=1e-5, atol=1e-6)
    assert layer.weight.grad is None and layer.bias.grad is None


@pytest.mark.parametrize("call,needle", [
    (lambda: add_lora(_unet(), -1), "lora_rank=-1"), (lambda: add_lora(_unet(), 0), "lora_rank=0"),
    (lambda: add_lora(_unet(), 2, alpha=0.0), "lora_alpha=0.0"),
    (lambda: add_lora(_unet(), 2, targets="mlp"), "'mlp'"),
    (lambda: add_lora(nn.Sequential(nn.Linear(2, 2)), 2), "finds no layer"),
    (lambda: TrainConfig(lora_rank=-2), "lora_rank=-2"),
    (lambda: TrainConfig(lora_rank=2, lora_alpha=-1, init_from="c"), "lora_alpha=-1"),
    (lambda: TrainConfig(lora_rank=2, lora_targets="attention,ff", init_from="c"), "'ff'"),
    (lambda: TrainConfig(lora_alpha=4.0), "needs lora_rank > 0"),
    (lambda: TrainConfig(lora_targets="resblock"), "needs lora_rank > 0"),
    (lambda: TrainConfig(lora_rank=2), "--init-from"),
    (lambda: TrainConfig(dataset="sines", attn=[], lora_rank=2, init_from="c"), "1-D U-Net"),
    (lambda: TrainConfig(lora_rank=2, init_from="c", objective="consistency-training"), "objective='diffusion'"),
])
def test_bad_lora_settings_are_one_line_errors(call, needle):
    with pytest.raises(DiffkitError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)


def _cfg(tmp_path, name, **over):
    return TrainConfig.from_dict({**TINY, "dropout": 0.0, "save_weight_dir": str(tmp_path / name / "checkpoints"),
                                  "sampled_dir": str(tmp_path / name / "samples"), **over})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-step run: the checkpoint fine-tuning starts from."""
    root = tmp_path_factory.mktemp("source")
    tr = Trainer(_cfg(root, "src", max_steps=2), tiny_dataset(), progress=False)
    return tr.run().checkpoint


def test_a_lora_run_trains_only_the_adapters_and_saves_them(source, tmp_path):
    """Only A and B are in the optimiser and the EMA; W0 stays as it was; the checkpoint round-trips:
    load_model merges the adapters and gives the trained (unmerged) network's output, with EMA or raw weights,
    and the merged export of diffkit convert is the same network."""
    given = {**TINY, "dropout": 0.0, "lora_rank": 2, "lora_alpha": 4.0, "ema_decay": 0.0, "max_steps": 3,
             "save_weight_dir": str(tmp_path / "lora" / "checkpoints")}
    tr = Trainer(TrainConfig.from_dict(fine_tune_fields(source, given)), tiny_dataset(), progress=False)
    base = {k: v.clone() for k, v in tr.model.state_dict().items() if ".lora_" not in k}
    adapters = [p for _, layer in lora_layers(tr.model) for p in (layer.lora_A, layer.lora_B)]
    assert [id(p) for p in tr.optimizer.param_groups[0]["params"]] == [id(p) for p in adapters]
    result = tr.run()
    after = tr.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert all(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))  # B left zero
    tensors, meta = ckpt.load_checkpoint(result.checkpoint)
    assert meta["lora"] == {"rank": 2, "alpha": 4.0, "targets": "attention"}
    assert {k for k in tensors if k.startswith("ema.")} == {f"ema.{k}" for k in after if ".lora_" in k}
    assert {int(k.split(".")[1]) for k in tensors if k.startswith("optim.")} == set(range(len(adapters)))
    x, t = _inputs()
    with torch.no_grad():
        trained = tr.model.eval()(x, t)
        for use_ema in (True, False):
            loaded = load_model(result.checkpoint, use_ema=use_ema)[0]
            assert not lora_layers(loaded)
            torch.testing.assert_close(loaded(x, t), trained, rtol=1e-5, atol=1e-5)
        export = export_weights(result.checkpoint, tmp_path / "merged.safetensors")
        assert ckpt.load_checkpoint(export)[1]["merged_lora"]["rank"] == 2
        assert torch.equal(load_model(export)[0](x, t), loaded(x, t))


def test_lora_off_keeps_the_checkpoint_layout(tmp_path):
    """lora_rank=0 (default): every parameter trains and is averaged, the keys are the network's own."""
    tr = Trainer(_cfg(tmp_path, "plain", max_steps=1), tiny_dataset(), progress=False)
    tensors, meta = tr.state_tensors()
    names = [n for n, _ in tr.model.named_parameters()]
    assert len(tr.optimizer.param_groups[0]["params"]) == len(names)
    assert {k for k in tensors if k.startswith("ema.")} == {f"ema.{k}" for k in tr.model.state_dict()}
    assert not any(".lora_" in k for k in tensors) and "lora" not in meta and "init_from" not in meta


# ------------------------------------------------------------------------------------------ --init-from
def test_init_from_starts_a_new_run_at_the_source_weights(source, tmp_path):
    """Step 0, the source's EMA weights (what sampling uses) in the network and the EMA; one step changes
    them; the checkpoints record the source (path and step) and the network fields are the source's."""
    given = {**{k: v for k, v in TINY.items() if k not in ("channel", "img_size")}, "dropout": 0.0, "lr": 5e-3,
             "max_steps": 1, "save_weight_dir": str(tmp_path / "ft" / "checkpoints")}
    cfg = TrainConfig.from_dict(fine_tune_fields(str(source.parent), given))
    assert (cfg.channel, cfg.img_size, cfg.in_channels, cfg.lr) == (16, 8, 1, 5e-3)
    tr = Trainer(cfg, tiny_dataset(), progress=False)
    expected = load_model(source)[0].state_dict()
    state = tr.model.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    assert all(torch.equal(e, p) for e, p in zip(tr.ema.params, tr.model.parameters()))
    assert tr.step == 0 and not tr.optimizer.state
    result = tr.run()
    changed = tr.model.state_dict()
    assert any(not torch.equal(changed[k], expected[k]) for k in changed)
    meta = ckpt.load_checkpoint(result.checkpoint)[1]
    assert meta["step"] == 1 and meta["init_from"]["step"] == 2
    assert meta["init_from"]["path"] == str((source.parent / "latest.safetensors").resolve())
    assert meta["init_from"]["sha256"] == ckpt.tensors_digest(expected)


@pytest.mark.parametrize("extra,needle", [
    (["--set", "channel=32"], "channel=32 is not allowed with --init-from"),
    (["--set", "attn=[]"], "attn=[] is not allowed with --init-from"),
    (["--conditional"], "conditional=True is not allowed with --init-from"),
    (["--set", "prediction_type=v_prediction"], "prediction_type='v_prediction' is not allowed"),
    (["--resume", "RUN"], "give one of them"),
    (["--set", "training_load_weight=RUN"], "resumes one"),
    (["--dataset", "sines"], "does not fit --init-from"),
    (["--set", "objective=consistency-training"], "objective='consistency-training'"),
])
def test_refused_fine_tuning_combinations_are_one_line_and_leave_nothing(source, tmp_path, capsys, extra, needle):
    extra = [a.replace("RUN", str(source)) for a in extra]
    line = one_line_error(capsys, "train", "--init-from", str(source), "--out", str(tmp_path / "ft"), "--device", "cpu",
                          "--steps", "1", "--no-sample", "--no-progress", *extra)
    assert needle in line, line
    assert not (tmp_path / "ft").exists()


def test_init_from_a_plain_state_dict_is_refused(tmp_path, capsys):
    torch.save(_unet().state_dict(), tmp_path / "w.pt")
    line = one_line_error(capsys, "train", "--init-from", str(tmp_path / "w.pt"), "--out", str(tmp_path / "ft"))
    assert "plain state dict" in line and not (tmp_path / "ft").exists()


def test_fine_tune_with_lora_on_the_command_line_then_sample(source, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["train", "--init-from", str(source), "--out", str(out), "--steps", "1", "--no-progress",
                 "--no-sample", "--device", "cpu", "--set", "batch_size=8", "--set", "lora_rank=2"]) == 0
    assert "LoRA rank 2" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out / "checkpoints"), "--num", "2", "--steps", "1", "--out",
                 str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()


def test_a_lora_run_resumes_exactly(source, tmp_path):
    """Stopped at step 2 and resumed to 4, a LoRA run ends with the weights, EMA and Adam moments of an
    uninterrupted 4-step run (the adapters' optimiser state and EMA round-trip; the base is not re-read
    from the source)."""
    def cfg(name, **over):
        given = {**TINY, "lora_rank": 2, "max_steps": 4, "save_weight_dir": str(tmp_path / name / "checkpoints"),
                 **over}
        return TrainConfig.from_dict(fine_tune_fields(source, given))
    whole = Trainer(cfg("whole"), tiny_dataset(), progress=False)
    whole.run()
    first = Trainer(cfg("split"), tiny_dataset(), progress=False)
    path = first.run(stop_at=2).checkpoint
    resume = TrainConfig.from_dict({**cfg("split").to_dict(), "training_load_weight": str(path)})
    second = Trainer(resume, tiny_dataset(), progress=False)
    assert second.init_source is None
    second.run()
    a, b = whole.state_tensors()[0], second.state_tensors()[0]
    resumed = ckpt.load_checkpoint(second.out_dir / "latest.safetensors")[1]
    assert resumed["init_from"] == ckpt.load_checkpoint(path)[1]["init_from"]
    assert a.keys() == b.keys() and any(k.startswith("rng.") for k in a)
    for k in a:  # the RNG states too: the resumed run draws the same noise and timesteps
        assert torch.equal(a[k], b[k]), k


def test_cross_attention_layers_adapt_and_merge():
    """A U-Net with cross-attention (context_dim): the spatial transformers' qkv, self_out and the
    cross-attention's to_q, to_kv, to_out are adapted; B = 0 is the base bit for bit, merged = unmerged."""
    net = _unet(context_dim=6)
    x, t = _inputs()
    context = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = net(x, t, context=context)
        add_lora(net, 2)
        assert torch.equal(net(x, t, context=context), before)
        names = [n for n, _ in lora_layers(net)]
        assert {n.rsplit(".", 1)[1] for n in names} == {"qkv", "self_out", "to_q", "to_kv", "to_out"}
        assert all(".cross.to_" in n for n in names if ".to_" in n)
        _randomise_b(net)
        unmerged = net(x, t, context=context)
        merged = merge_lora(net)(x, t, context=context)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged, before)


# ------------------------------------------------------------------------------------------ review fixes
@pytest.fixture(scope="module")
def lora_checkpoint(source, tmp_path_factory):
    """A 1-step LoRA run (attention and residual blocks) fine-tuned from ``source``."""
    root = tmp_path_factory.mktemp("lora")
    given = {**TINY, "dropout": 0.0, "lora_rank": 2, "lora_targets": "attention,resblock", "max_steps": 1,
             "save_weight_dir": str(root / "checkpoints")}
    config = TrainConfig.from_dict(fine_tune_fields(source, given))
    return Trainer(config, tiny_dataset(), progress=False).run().checkpoint


def test_a_loaded_lora_checkpoint_is_trainable_like_any_loaded_network(lora_checkpoint, source):
    """add_lora froze the base; once merged at load, every weight requires a gradient again, as a plain
    checkpoint's do (diffkit experiment noise-scale measures the gradients of the parameters that
    require one: it used to find none and stop)."""
    plain = load_model(source)[0]
    loaded = load_model(lora_checkpoint)[0]
    assert all(p.requires_grad for p in plain.parameters())
    assert [n for n, p in loaded.named_parameters() if not p.requires_grad] == []


def test_a_fine_tuned_teacher_distils(lora_checkpoint, tmp_path):
    """diffkit distill --teacher LORA_CKPT: the student's config drops the teacher's own init_from and LoRA
    fields (its weights are the teacher's merged ones); it used to be refused (init_from needs
    objective='diffusion'). --set lora_rank with distillation names the objective, not --init-from."""
    from diffkit.commands.distill import distill_config
    cfg = distill_config(lora_checkpoint, tmp_path / "cm")
    assert cfg.objective == "consistency-distillation"
    assert (cfg.init_from, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets) == (None, 0, None, "attention")
    with pytest.raises(DiffkitError, match="lora_rank=2 works with objective='diffusion'"):
        distill_config(lora_checkpoint, tmp_path / "cm", ["lora_rank=2"])


TEXT = {"text_conditioning": True, "context_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 2}


@pytest.fixture(scope="module")
def text_source(tmp_path_factory):
    """A 1-step text-conditioned run on the digits' captions."""
    root = tmp_path_factory.mktemp("text")
    images = (torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = InMemoryImageDataset(images, torch.arange(40) % 10, num_classes=10)
    return Trainer(_cfg(root, "src", max_steps=1, **TEXT), data, progress=False).run().checkpoint


def test_a_text_source_needs_the_same_vocabulary_before_any_folder(text_source, tmp_path, capsys):
    """The text encoder's token embedding row i belongs to word i of the source's vocabulary: another data
    set's captions (fashion-mnist: other words) are refused in one line before the run folder is made
    (it used to fail on the embedding's shape after); the same captions (mnist, as digits) are accepted."""
    line = one_line_error(capsys, "train", "--init-from", str(text_source), "--out", str(tmp_path / "ft"), "--device",
                          "cpu", "--steps", "1", "--no-sample", "--no-progress", "--dataset", "fashion-mnist",
                          "--data-dir", str(tmp_path / "none"))
    assert "dataset='fashion-mnist' gives the captions another vocabulary" in line, line
    assert "trouser" in line or "..." in line
    assert not (tmp_path / "ft").exists()
    fields = fine_tune_fields(text_source, {**TINY, "dataset": "mnist", "data_dir": str(tmp_path)})
    assert fields["text_conditioning"] and fields["dataset"] == "mnist"


def test_the_trainer_checks_the_vocabulary_of_a_text_source(text_source, tmp_path):
    """The library-level guard (a Trainer built in Python, not through diffkit train) checks the captions
    of the data set it is given, before the weights are copied: class names of the same count but other
    words would read other words' embeddings without any shape error."""
    source_cfg = ckpt.load_checkpoint(text_source)[1]["config"]
    network = {k: source_cfg[k] for k in ("channel", "channel_mult", "attn", "num_res_blocks", "img_size",
                                          "num_heads", *TEXT)}
    cfg = TrainConfig.from_dict({**TINY, **network, "dataset": "folder", "data_dir": str(tmp_path),
                                 "init_from": str(text_source), "save_weight_dir": str(tmp_path / "c")})
    images = torch.zeros(40, 1, 8, 8, dtype=torch.uint8)
    words = [f"w{k}" for k in range(10)]  # ten classes, as the digits, with other names
    data = InMemoryImageDataset(images, torch.arange(40) % 10, num_classes=10, class_names=words)
    with pytest.raises(DiffkitError, match="dataset='folder' gives the captions another vocabulary"):
        Trainer(cfg, data, progress=False)


@pytest.fixture(scope="module")
def folder_text_source(tmp_path_factory):
    """A 1-step text-conditioned run on an image folder of two classes, cat and dog."""
    root = tmp_path_factory.mktemp("folder_text")
    data = InMemoryImageDataset(torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 2,
                                class_names=("cat", "dog"))
    cfg = _cfg(root, "src", max_steps=1, dataset="folder", data_dir=str(root), **TEXT)
    return Trainer(cfg, data, progress=False).run().checkpoint


def _image_folder(root, classes):
    """Two 8x8 grey PNGs in a sub-folder per class."""
    import numpy as np
    from PIL import Image
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * k + i, np.uint8), "L").save(root / name / f"{i}.png")
    return root


def test_a_folder_of_other_classes_is_refused_before_the_run_folder(folder_text_source, tmp_path, capsys,
                                                                     monkeypatch):
    """A folder data set's captions come from its class-folder names (diffkit.data.folder_classes): a
    vocabulary other than the source's is refused in one line naming the differing words, before the
    run folder is made (it used to be found by the Trainer, after); the same classes train."""
    from diffkit.commands import train as train_command
    made, real = [], train_command.check_writable_dir  # the folders the command makes
    monkeypatch.setattr(train_command, "check_writable_dir", lambda path, *a: made.append(path) or real(path, *a))
    args = ["train", "--init-from", str(folder_text_source), "--device", "cpu", "--steps", "1", "--no-sample",
            "--no-progress", "--dataset", "folder", "--batch-size", "2"]
    line = one_line_error(capsys, *args, "--data-dir", _image_folder(tmp_path / "cows", ["cat", "cow"]),
                          "--out", tmp_path / "ft")
    assert "dataset='folder' gives the captions another vocabulary" in line and "differing: cow, dog)" in line, line
    assert not made and not (tmp_path / "ft").exists()
    pets = _image_folder(tmp_path / "pets", ["cat", "dog"])
    (pets / "notes").mkdir()  # no images: not a class, for the loader and the check alike
    (pets / "notes" / "readme.txt").write_text("x")
    assert main([*map(str, args), "--data-dir", str(pets), "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "checkpoints" / "latest.safetensors").is_file()


def test_a_vocabulary_of_the_same_size_with_other_words_is_refused():
    """Same number of words, one of them other: row i of the embedding would be read for another word."""
    from diffkit.text import CaptionSet, check_same_vocabulary
    cats = CaptionSet((("a cat",), ("a dog",)), ("{}",))
    cows = CaptionSet((("a cow",), ("a dog",)), ("{}",))
    check_same_vocabulary(["a", "cat", "dog"], cats, "folder", "SRC")
    with pytest.raises(DiffkitError, match=r"another vocabulary \(3 words\) than the text encoder of SRC \(3 words; "
                                           r"differing: cat, cow\)"):
        check_same_vocabulary(["a", "cat", "dog"], cows, "folder", "SRC")


def test_a_fine_tuning_run_warms_its_ema_up_unless_told_otherwise(source):
    """The EMA of a fine-tuning run warms up (min(ema_decay, (1 + n)/(10 + n)), as diffusers' EMAModel in its
    fine-tuning scripts): with ema_decay=0.9999 fixed, 2000 steps would leave 0.9999^2000 = 82% of the source
    (B = 0 for LoRA) in the EMA weights diffkit sample takes. A given ema_warmup or ema_power wins."""
    assert fine_tune_fields(source, {"lora_rank": 2})["ema_warmup"] is True
    assert fine_tune_fields(source, {"ema_warmup": False})["ema_warmup"] is False
    fields = fine_tune_fields(source, {"ema_power": 0.75})
    assert "ema_warmup" not in fields and TrainConfig.from_dict(fields).ema_power == 0.75
    assert 0.9999 ** 2000 == pytest.approx(0.8187, abs=1e-4)


@pytest.mark.parametrize("override,needle", [
    ("lora_alpha=4", "lora_alpha=4.0 is not allowed with --resume"),  # it used to rescale the adapters silently
    ("lora_rank=4", "lora_rank=4 is not allowed with --resume"),
    ("lora_targets=attention", "lora_targets='attention' is not allowed with --resume"),
])
def test_a_resumed_lora_run_keeps_its_adapters(lora_checkpoint, capsys, override, needle):
    """The adapters' rank, targets and scale alpha / r are the checkpoint's: another is one line before the
    run starts (alpha used to be taken, so the network jumped at the resume); the same values resume."""
    from diffkit.cli import build_parser
    from diffkit.commands.train import config_from_args
    line = one_line_error(capsys, "train", "--resume", str(lora_checkpoint), "--steps", "3", "--no-sample",
                          "--no-progress", "--set", override)
    assert needle in line, line
    same = build_parser().parse_args(["train", "--resume", str(lora_checkpoint), "--steps", "3", "--set",
                                      "lora_alpha=2", "--set", "lora_targets=resblock,attention"])
    assert config_from_args(same).lora_rank == 2


def test_an_adapted_winograd_convolution_is_base_plus_scaled_b_a():
    """A resblock conv whose base runs through diffkit's Winograd F(4x4, 3x3) kernel (fp32, 64 channels,
    16x16, batch 8): output = F.conv2d(x, W0) + (alpha/r) conv1x1(conv3x3(x, A), B), and the adapters'
    gradients are those of that formula, the frozen W0 getting none. Needs the CPU kernels (skipped with
    DIFFKIT_CPU_KERNELS=0)."""
    from diffkit.models import winograd
    if not winograd.winograd_available():
        pytest.skip("the CPU kernels are off or unavailable")
    torch.manual_seed(0)
    conv = adapt_layer(winograd.WinogradConv2d(64, 64, 3, padding=1).requires_grad_(False), 4, alpha=8.0)
    with torch.no_grad():
        conv.lora_B.normal_()
    x = torch.randn(8, 64, 16, 16)
    assert winograd.winograd_applies(conv, x.requires_grad_(True))
    g = torch.randn(8, 64, 16, 16)
    (conv(x) * g).sum().backward()
    grads = conv.lora_A.grad.clone(), conv.lora_B.grad.clone()
    conv.lora_A.grad = conv.lora_B.grad = None
    a, b = conv.lora_A, conv.lora_B
    expected = F.conv2d(x, conv.weight, conv.bias, padding=1) + 2.0 * F.conv2d(F.conv2d(x, a, padding=1), b)
    (expected * g).sum().backward()
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], b.grad, rtol=1e-5, atol=1e-5)
    assert conv.weight.grad is None
