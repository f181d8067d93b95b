"""LoRA adapter files (diffkit.lora_files): diffkit convert --lora-only, --lora FILE[:SCALE] merged at load.

Checked against the closed form W = W0 + sum_i s_i (alpha_i / r_i) B_i A_i (Hu et al. 2021, eq. 3, with
diffusers' adapter scale s_i) written here with einsum from the file's tensors, and against the
self-contained LoRA checkpoint the adapters came from."""
import itertools
import math

import pytest
import torch

from diffkit import checkpoint as ckpt
from diffkit.cli import main
from diffkit.commands.train import fine_tune_fields
from diffkit.config import TrainConfig
from diffkit.errors import DiffkitError
from diffkit.loading import export_weights, load_denoiser, load_model
from diffkit.lora import lora_layers
from diffkit.lora_files import apply_adapter_file, export_adapter, merge_adapter, merge_adapters, read_adapter
from diffkit.models.network import build_network
from diffkit.training import Trainer
from test_cli_errors import one_line_error
from test_training import TINY, tiny_dataset


def _run(root, name, **over):
    cfg = {**TINY, "dropout": 0.0, "save_weight_dir": str(root / name / "checkpoints"),
           "sampled_dir": str(root / name / "samples"), **over}
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-step base run, two 2-step LoRA runs fine-tuned from it (rank 2, alpha 4, attention and residual
    blocks, EMA decay 0.5; rank 1, alpha 1, attention, no EMA) with a large learning rate so B is far from 0,
    and the adapter file of each."""
    root = tmp_path_factory.mktemp("lora_files")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("diffkit.training.plot_loss_curve", lambda *args: None)  # matplotlib: most of a tiny run's time
        return _train_runs(root)


def _train_runs(root):
    base = Trainer(TrainConfig.from_dict(_run(root, "base", max_steps=1)), tiny_dataset(), progress=False).run()
    out = {"root": root, "base": base.checkpoint}
    for name, over in (("a", {"lora_rank": 2, "lora_alpha": 4.0, "lora_targets": "attention,resblock",
                              "ema_decay": 0.5}),
                       ("b", {"lora_rank": 1, "lora_targets": "attention", "seed": 7, "ema_decay": 0.0})):
        given = _run(root, name, max_steps=2, lr=5e-2, **over)
        cfg = TrainConfig.from_dict(fine_tune_fields(base.checkpoint, given))
        out[f"lora_{name}"] = Trainer(cfg, tiny_dataset(), progress=False).run().checkpoint
        out[name] = export_adapter(out[f"lora_{name}"], root / f"{name}.safetensors")
    return out


def _state(path, lora=None, **kw):
    return load_model(path, lora=lora, **kw)[0].state_dict()


def _delta(path):
    """{weight key: (alpha / r) B A} of an adapter file, by einsum (Delta W[o, i] = sum_k B[o, k] A[k, i])."""
    tensors, meta = read_adapter(path)
    scale = meta["lora"]["alpha"] / meta["lora"]["rank"]
    out = {}
    for key in tensors:
        if key.endswith(".lora_A"):
            layer = key[:-len(".lora_A")]
            a, b = tensors[key].double(), tensors[f"{layer}.lora_B"].double()
            if a.ndim == 4:  # conv: A (r, in, kh, kw), B (out, r, 1, 1)
                d = torch.einsum("ok,kihw->oihw", b[:, :, 0, 0], a)
            else:
                d = torch.einsum("ok,ki->oi", b, a)
            out[f"{layer}.weight"] = scale * d
    return out


def _bits(t):
    return t.contiguous().view(torch.int32)


def test_the_adapter_file_holds_only_the_adapters_sampling_uses(runs):
    """Only *.lora_A / *.lora_B, equal to the checkpoint's EMA adapters; meta: rank, alpha, targets and
    the base's digest (the LoRA run's init_from, which is the base's loaded weights) and network."""
    tensors, meta = read_adapter(runs["a"])
    full, full_meta = ckpt.load_checkpoint(runs["lora_a"])
    ema = {k[len("ema."):]: v for k, v in full.items() if k.startswith("ema.")}
    assert set(tensors) == set(ema) and all(k.endswith((".lora_A", ".lora_B")) for k in tensors)
    assert all(torch.equal(tensors[k], ema[k]) for k in tensors)
    raw = export_adapter(runs["lora_a"], runs["root"] / "raw.safetensors", use_ema=False)  # --no-ema
    raw_b = {k: v for k, v in read_adapter(raw)[0].items() if k.endswith("lora_B")}
    assert all(torch.equal(v, full[f"model.{k}"]) and not torch.equal(v, ema[k]) for k, v in raw_b.items())
    assert meta["lora"] == {"rank": 2, "alpha": 4.0, "targets": "attention,resblock"}
    assert meta["base"]["sha256"] == full_meta["init_from"]["sha256"] == ckpt.tensors_digest(_state(runs["base"]))
    assert meta["base"]["unet"] == full_meta["unet"]
    adapter_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert runs["a"].stat().st_size < adapter_bytes + 16 * 1024  # tensors + a header, no base weights
    assert runs["a"].stat().st_size < runs["lora_a"].stat().st_size / 5


@pytest.mark.parametrize("scale", [0.7, -1.5])
def test_merged_weights_are_w0_plus_scale_alpha_over_r_b_a(runs, scale):
    base, merged, delta = _state(runs["base"]), _state(runs["base"], [(runs["a"], scale)]), _delta(runs["a"])
    assert merged.keys() == base.keys() and {"qkv", "proj", "conv1", "conv2"} == {k.split(".")[-2] for k in delta}
    for key in base:
        if key in delta:
            assert delta[key].abs().max() > 1e-3  # B far from 0: the test sees the adapter
            want = (base[key].double() + scale * delta[key]).float()
            torch.testing.assert_close(merged[key], want, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(_bits(merged[key]), _bits(base[key])), key


def test_scale_zero_gives_the_base_bit_for_bit(runs):
    """Even a weight that is -0.0 stays -0.0 (W0 + 0 * delta would make it +0.0)."""
    base, merged = _state(runs["base"]), _state(runs["base"], [(runs["a"], 0.0)])
    assert all(torch.equal(_bits(merged[k]), _bits(base[k])) for k in base)
    model, meta = load_model(runs["base"])[:2]
    key, delta = next(iter(_delta(runs["a"]).items()))
    layer = dict(model.named_modules())[key.rsplit(".", 1)[0]]
    with torch.no_grad():  # -0.0 where 0 * delta is +0.0
        layer.weight[delta > 0] = -0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, adapter_meta = read_adapter(runs["a"])
    merge_adapter(model, tensors, adapter_meta["lora"], 0.0)
    assert all(torch.equal(_bits(v), _bits(before[k])) for k, v in model.state_dict().items())


def test_scale_one_is_the_self_contained_lora_checkpoint_bit_for_bit(runs):
    """The same A, B, W0 and the same merge arithmetic (merge_lora's W0 + (alpha/r) B A with the scale
    1 * alpha / r, the same float): every weight equal bit for bit, so the samples are too."""
    from_file, from_ckpt = _state(runs["base"], [runs["a"]]), _state(runs["lora_a"])
    assert from_file.keys() == from_ckpt.keys()
    assert all(torch.equal(_bits(from_file[k]), _bits(from_ckpt[k])) for k in from_file)


def test_two_adapters_add_linearly(runs):
    base = _state(runs["base"])
    both = _state(runs["base"], [(runs["a"], 0.5), (runs["b"], 2.0)])
    other_order = _state(runs["base"], [(runs["b"], 2.0), (runs["a"], 0.5)])
    da, db = _delta(runs["a"]), _delta(runs["b"])
    assert set(db) < set(da)  # b adapts the attention only
    for key in base:
        want = base[key].double() + 0.5 * da.get(key, 0) + 2.0 * db.get(key, 0)
        torch.testing.assert_close(both[key], want.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other_order[key], both[key], rtol=1e-5, atol=1e-6)
    halves = _state(runs["base"], [(runs["a"], 0.5), (runs["a"], 0.5)])
    torch.testing.assert_close(halves, _state(runs["base"], [runs["a"]]), rtol=1e-5, atol=1e-6)


def test_merging_leaves_the_rng_and_the_trainable_flags_as_they_were(runs):
    """add_lora draws A (then overwritten): the global RNG is where loading the base alone leaves it."""
    torch.manual_seed(0)
    load_model(runs["base"])
    state = torch.get_rng_state()
    torch.manual_seed(0)
    model = load_model(runs["base"], lora=[runs["a"]])[0]
    assert torch.equal(torch.get_rng_state(), state)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_the_python_api(runs):
    """load_denoiser(lora=...) and apply_adapter_file on a loaded base: the same weights."""
    d = load_denoiser(runs["base"], lora=[(runs["a"], 0.7)])
    model, meta = load_model(runs["base"])[:2]
    apply_adapter_file(model, runs["a"], 0.7, base_meta=meta)
    assert all(torch.equal(v, d.model.state_dict()[k]) for k, v in model.state_dict().items())
    plain = load_model(runs["base"])[0]
    apply_adapter_file(plain, runs["a"], 0.7)  # no base description: keys and shapes checked only
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in plain.state_dict().items())


def test_the_base_given_as_its_run_folder_or_its_convert_export_is_the_same_base(runs):
    """The digest is of the loaded (EMA) weights, not of a file: the run folder and the weights-only
    export of the base take the adapter as the checkpoint file does, bit for bit."""
    export = export_weights(runs["base"], runs["root"] / "base_weights.safetensors")
    want = _state(runs["base"], [(runs["a"], 0.7)])
    for base in (runs["base"].parent, export):
        got = _state(base, [(runs["a"], 0.7)])
        assert all(torch.equal(_bits(got[k]), _bits(want[k])) for k in want), base


def test_an_adapter_trained_on_a_lora_checkpoint_merges_onto_it_with_its_own_alpha_over_r(runs, monkeypatch):
    """A LoRA run c started from the LoRA checkpoint a (rank 1, alpha 3: alpha/r 3, a's is 4/2): its base
    is a's merged network, and --checkpoint LORA_A --lora C gives W_a + s (3/1) B_c A_c (the adapter's
    rank and alpha, not the base checkpoint's). c trains with dropout 0.2 (a's 0): not a network difference."""
    monkeypatch.setattr("diffkit.training.plot_loss_curve", lambda *args: None)
    given = {**_run(runs["root"], "c", max_steps=1, lr=5e-2, lora_rank=1, lora_alpha=3.0, seed=3), "dropout": 0.2}
    lora_c = Trainer(TrainConfig.from_dict(fine_tune_fields(runs["lora_a"], given)), tiny_dataset(),
                     progress=False).run().checkpoint
    adapter = export_adapter(lora_c, runs["root"] / "c.safetensors")
    base, merged, delta = _state(runs["lora_a"]), _state(runs["lora_a"], [(adapter, -0.5)]), _delta(adapter)
    assert read_adapter(adapter)[1]["lora"]["alpha"] == 3.0 and delta
    for key in base:
        want = base[key].double() - 0.5 * delta[key] if key in delta else base[key]
        torch.testing.assert_close(merged[key], want.float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(DiffkitError, match="other base weights"):
        load_model(runs["base"], lora=[adapter])  # the plain base is not the one c was trained on


# ------------------------------------------------------------------------------------------ refused
def test_another_base_is_refused_unless_any_base(runs):
    """Other weights of the same network (the b run's merged export): refused; --lora-any-base merges
    onto them (the closed form on that base)."""
    other = export_weights(runs["lora_b"], runs["root"] / "other.safetensors")
    with pytest.raises(DiffkitError, match="was trained on other base weights") as err:
        load_model(other, lora=[runs["a"]])
    assert "\n" not in str(err.value) and "--lora-any-base" in str(err.value)
    base_digest = read_adapter(runs["a"])[1]["base"]["sha256"][:12]  # the base's step and this one's: a run that
    assert f"(sha256 {base_digest}, {runs['base']} step 1; this --checkpoint's " in str(err.value)  # went on
    assert f"{ckpt.tensors_digest(_state(other))[:12]} (step 2), its EMA weights" in str(err.value)
    with pytest.raises(DiffkitError, match="other base weights"):
        load_model(runs["base"], use_ema=False, lora=[runs["a"]])  # the raw weights are not the ones trained on
    base, merged, delta = _state(other), _state(other, [runs["a"]], lora_any_base=True), _delta(runs["a"])
    for key in delta:
        torch.testing.assert_close(merged[key], (base[key].double() + delta[key]).float(), rtol=1e-5, atol=1e-6)


def test_another_network_or_a_consistency_model_is_refused(runs):
    meta = load_model(runs["base"])[1]
    unet = {**meta["unet"], "channel": 8}
    with pytest.raises(DiffkitError, match=r"trained on another network \(channel=16; this --checkpoint has "
                                           r"channel=8\)"):
        merge_adapters(build_network(unet), {"unet": unet}, [runs["a"]], any_base=True)
    with pytest.raises(DiffkitError, match="apply to diffusion models; this --checkpoint is a consistency model"):
        merge_adapters(load_model(runs["base"])[0], {**meta, "consistency": {"sigma_data": 0.5}}, [runs["a"]])


def test_a_key_or_shape_the_network_lacks_leaves_it_unchanged(runs):
    model, meta = load_model(runs["base"])[:2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, adapter = read_adapter(runs["a"])
    key = next(iter(tensors))
    for (bad, needle), scale in itertools.product(
            (({k: v for k, v in tensors.items() if k != key}, f"it lacks {key}"),
             ({**tensors, "x.lora_A": tensors[key]}, "this network has no x.lora_A"),
             ({**tensors, key: tensors[key][:1]}, f"{key} is")), (1.0, 0.0)):  # scale 0 too: it skipped the check
        with pytest.raises(DiffkitError, match="does not fit this network: " + needle.replace(".", r"\.")):
            merge_adapter(model, bad, adapter["lora"], scale)
        assert not lora_layers(model) and model.state_dict().keys() == before.keys()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_network_with_unmerged_adapters_is_refused_as_it_is(runs):
    """apply_adapter_file on a network in LoRA training (adapters not merged) overwrote its lora_A / lora_B."""
    from diffkit.lora import add_lora
    model = add_lora(load_model(runs["base"])[0], 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DiffkitError, match="has unmerged LoRA adapters") as err:
        apply_adapter_file(model, runs["a"])
    assert "\n" not in str(err.value) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_later_adapter_that_does_not_fit_leaves_the_earlier_ones_unmerged(runs):
    """merge_adapters(model, meta, [a, bad]): a failed in bad's key check left a merged into the weights."""
    model, meta = load_model(runs["base"])[:2]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors, adapter = read_adapter(runs["b"])
    bad = runs["root"] / "bad_key.safetensors"
    ckpt.save_checkpoint(bad, {**tensors, "x.lora_A": next(iter(tensors.values())).clone()}, adapter)
    with pytest.raises(DiffkitError, match="does not fit this network: this network has no x.lora_A"):
        merge_adapters(model, meta, [(runs["a"], 0.5), runs["b"], bad])
    assert not lora_layers(model) and model.state_dict().keys() == before.keys()
    assert all(torch.equal(_bits(v), _bits(before[k])) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, "1", True, None])
def test_a_scale_that_is_not_a_finite_number_is_refused(runs, scale):
    with pytest.raises(DiffkitError, match="give a finite number"):
        load_model(runs["base"], lora=[(runs["a"], scale)])


def test_files_that_are_not_adapters_are_refused(runs):
    with pytest.raises(DiffkitError, match="is not a LoRA adapter file"):
        load_model(runs["base"], lora=[runs["base"]])
    with pytest.raises(DiffkitError, match=r"is a LoRA checkpoint \(base \+ adapters\): give it as --checkpoint"):
        load_model(runs["base"], lora=[runs["lora_a"]])
    with pytest.raises(DiffkitError, match="is a diffkit lora adapter file, not a diffusion model checkpoint"):
        load_model(runs["a"])
    with pytest.raises(DiffkitError, match="lora='x' is not allowed"):
        load_model(runs["base"], lora="x")
    with pytest.raises(DiffkitError, match="has no LoRA adapters; --lora-only takes a LoRA training checkpoint"):
        export_adapter(runs["base"], runs["root"] / "none.safetensors")
    with pytest.raises(DiffkitError, match="has merged LoRA weights"):
        export_adapter(export_weights(runs["lora_a"], runs["root"] / "m.safetensors"), runs["root"] / "n.safetensors")
    assert not (runs["root"] / "none.safetensors").exists() and not (runs["root"] / "n.safetensors").exists()
    tensors, meta = read_adapter(runs["a"])
    for bad, needle in (({**meta, "base": {}}, "malformed adapter description"),
                        ({**meta, "lora": {**meta["lora"], "rank": "two"}}, "lora_rank")):
        ckpt.save_checkpoint(runs["root"] / "bad.safetensors", tensors, bad)
        with pytest.raises(DiffkitError, match=needle) as err:
            load_model(runs["base"], lora=[runs["root"] / "bad.safetensors"], lora_any_base=True)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ command line
def _sample(out, checkpoint, *extra):
    return main(["sample", "--checkpoint", str(checkpoint), "--num", "2", "--steps", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu", "--seed", "3", *extra])


def test_convert_then_sample_with_the_adapter_is_the_lora_checkpoint(runs, tmp_path, capsys):
    adapter = tmp_path / "adapter.safetensors"
    assert main(["convert", "--checkpoint", str(runs["lora_a"]), "--lora-only", "--out", str(adapter)]) == 0
    assert "wrote LoRA adapter file" in capsys.readouterr().out
    assert read_adapter(adapter)[0].keys() == read_adapter(runs["a"])[0].keys()
    assert _sample(tmp_path / "file.png", runs["base"], "--lora", f"{adapter}:1") == 0
    assert _sample(tmp_path / "ckpt.png", runs["lora_a"]) == 0
    assert _sample(tmp_path / "base.png", runs["base"]) == 0
    assert _sample(tmp_path / "zero.png", runs["base"], "--lora", f"{adapter}:0") == 0
    png = {n: (tmp_path / f"{n}.png").read_bytes() for n in ("file", "ckpt", "base", "zero")}
    assert png["file"] == png["ckpt"] and png["zero"] == png["base"] and png["file"] != png["base"]


@pytest.mark.parametrize("command", ["sample", "edit", "eval", "upscale"])
def test_each_loading_command_takes_lora(command):
    from diffkit.cli import build_parser
    from diffkit.commands._common import lora_arg
    args = build_parser().parse_args([command, "--checkpoint", "b.safetensors", "--lora", "a.safetensors:0.5",
                                      "--lora", "c.safetensors", "--lora", "C:\\d\\e.safetensors"]
                                     + (["--images", "x", "--out", "y"] if command in ("edit", "upscale") else []))
    assert args.lora == [("a.safetensors", 0.5), ("c.safetensors", 1.0), ("C:\\d\\e.safetensors", 1.0)]
    assert lora_arg("x.safetensors:-2") == ("x.safetensors", -2.0)
    assert lora_arg("runs/a:b/x.safetensors:0.5") == ("runs/a:b/x.safetensors", 0.5)  # the last ':' is the scale's
    assert lora_arg("runs/a:b/x.safetensors") == ("runs/a:b/x.safetensors", 1.0)


@pytest.mark.parametrize("value,needle", [("a.safetensors:nan", "scale 'nan' is not allowed"),
                                          ("a.safetensors:inf", "scale 'inf' is not allowed"),
                                          ("a.safetensors:big", "scale 'big' is not a number"),
                                          ("a.safetensors:", "scale '' is not a number"),
                                          ("a:b.safetensors", "an explicit :SCALE, 'a:b.safetensors:1'"),
                                          ("", "empty path"), (":0.5", "empty path")])
def test_bad_lora_values_are_one_line(runs, tmp_path, capsys, value, needle):
    with pytest.raises(SystemExit) as stop:  # argparse's refusal, one line (cli._Parser)
        main(["sample", "--checkpoint", str(runs["base"]), "--lora", value, "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_refused_on_the_command_line_before_any_output(runs, tmp_path, capsys):
    out = tmp_path / "o" / "s.png"
    for argv, needle in (
            (["sample", "--checkpoint", str(runs["base"]), "--lora", str(runs["base"]), "--out", str(out)],
             "is not a LoRA adapter file"),
            (["sample", "--checkpoint", str(runs["base"]), "--no-ema", "--lora", str(runs["a"]), "--out", str(out)],
             "was trained on other base weights"),
            (["sample", "--checkpoint", str(runs["base"]), "--lora-any-base", "--out", str(out)],
             "--lora-any-base applies to --lora adapters"),
            (["eval", "--samples", str(tmp_path), "--lora", str(runs["a"]), "--out", str(tmp_path / "o" / "e.json")],
             "--lora applies to sampling a --checkpoint"),
            (["convert", "--checkpoint", str(runs["lora_a"]), "--lora-only", "--to-diffusers", str(tmp_path / "o")],
             "--lora-only goes with --checkpoint LORA_CKPT --out FILE"),
            (["convert", "--checkpoint", str(runs["base"]), "--lora-only", "--out",
              str(tmp_path / "o" / "a.safetensors")],
             "has no LoRA adapters")):
        line = one_line_error(capsys, *argv, *(["--device", "cpu"] if argv[0] != "convert" else []))
        assert needle in line, line
        assert not (tmp_path / "o").exists(), argv


def test_a_diffkit_adapter_on_a_stable_diffusion_folder_is_refused(runs, tmp_path, capsys):
    """A Stable Diffusion folder takes diffusers / kohya LoRA files (tests/test_sd_lora.py), not diffkit's."""
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    line = one_line_error(capsys, "sample", "--checkpoint", str(folder), "--lora", str(runs["a"]), "--prompt", "a",
                          "--out", str(tmp_path / "o" / "s.png"), "--device", "cpu")
    assert "is a diffkit file (an adapter of diffkit checkpoints); a Stable Diffusion folder takes" in line, line
    assert not (tmp_path / "o").exists()


def test_edit_merges_the_adapter_too(runs, tmp_path):
    """The adapter's edits are the LoRA checkpoint's (the same PNG bytes), not the base's."""
    from diffkit.images import save_images
    save_images(torch.rand(4, 1, 8, 8) * 2 - 1, tmp_path / "in")
    outs = {}
    for name, argv in (("file", ["--checkpoint", str(runs["base"]), "--lora", str(runs["a"])]),
                       ("ckpt", ["--checkpoint", str(runs["lora_a"])]), ("base", ["--checkpoint", str(runs["base"])])):
        assert main(["edit", *argv, "--images", str(tmp_path / "in"), "--strength", "0.9", "--steps", "4",
                     "--out", str(tmp_path / name), "--device", "cpu", "--no-progress"]) == 0
        outs[name] = [p.read_bytes() for p in sorted((tmp_path / name).glob("*.png"))]
    assert outs["file"] == outs["ckpt"] and outs["file"] != outs["base"] and outs["file"]


def test_eval_merges_the_adapter_and_records_it(runs):
    """The bound of base + adapter file is the LoRA checkpoint's; the settings name the files and scales."""
    from diffkit.evaluation import evaluate
    nll = dict(nll_num=2, nll_stride=500, nll_dense_below=1, batch_size=2)
    result = evaluate("nll-strided", checkpoint=runs["base"], lora=[(runs["a"], 1.0)], **nll)
    assert result["settings"]["lora"] == [[str(runs["a"]), 1.0]]
    bpd = evaluate("nll-strided", checkpoint=runs["lora_a"], **nll)["metrics"]["nll-strided"]["bpd"]
    assert result["metrics"]["nll-strided"]["bpd"] == bpd


def test_a_text_conditioned_base_takes_its_adapter_bit_for_bit(tmp_path, monkeypatch):
    """Cross-attention adapters (to_q, to_kv, to_out) under the TextConditionedUNet's unet. prefix (no
    longer slow: without the loss-curve plots the two 1-step runs take under a second)."""
    from diffkit.data import InMemoryImageDataset
    monkeypatch.setattr("diffkit.training.plot_loss_curve", lambda *args: None)
    text = {"text_conditioning": True, "context_dim": 16, "text_width": 16, "text_layers": 1, "text_heads": 2}
    images = (torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = InMemoryImageDataset(images, torch.arange(40) % 10, num_classes=10)
    base = Trainer(TrainConfig.from_dict(_run(tmp_path, "base", max_steps=1, **text)), data, progress=False).run()
    given = _run(tmp_path, "lora", max_steps=1, lr=5e-2, lora_rank=2, ema_decay=0.0, **text)
    lora = Trainer(TrainConfig.from_dict(fine_tune_fields(base.checkpoint, given)), data, progress=False).run()
    adapter = export_adapter(lora.checkpoint, tmp_path / "a.safetensors")
    assert any(k.startswith("unet.") and ".cross.to_kv." in k for k in read_adapter(adapter)[0])
    from_file, from_ckpt = _state(base.checkpoint, [adapter]), _state(lora.checkpoint)
    assert all(torch.equal(_bits(from_file[k]), _bits(from_ckpt[k])) for k in from_ckpt)
