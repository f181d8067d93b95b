"""Finished table cells kept in a JSON ledger (diffkit.score_ledger): a table finished over many runs."""
import json

import pytest
import torch

import diffkit.experiments as experiments
from diffkit.config import TrainConfig
from diffkit.errors import DiffkitError
from diffkit.evaluation import SampleScorer
from diffkit.experiments import ddim_table
from diffkit.loading import load_denoiser
from diffkit.metrics import EvaluatorConfig, EvaluatorNet
from diffkit.training import Trainer
from test_evaluation import TINY, main, one_line_error


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def scorer(seed=0, reference_seed=1):
    torch.manual_seed(seed)
    net = EvaluatorNet(EvaluatorConfig(image_size=8, in_channels=1, num_classes=10)).eval()
    reference = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(reference_seed)) * 2 - 1
    return SampleScorer(["confidence"], reference, evaluator=net)


def table(denoiser, ledger, steps=(2,), the_scorer=None):
    return ddim_table(denoiser, the_scorer or scorer(), etas=[0.0, 1.0], steps_list=list(steps), num=6, seed=5,
                      batch_size=4, ledger_path=ledger)


def no_sampling(*_, **__):
    raise AssertionError("a cell in the ledger was sampled again")


def test_cells_in_the_ledger_are_not_sampled_again(checkpoint, tmp_path, monkeypatch):
    ledger = tmp_path / "results" / "ledger.json"
    ledger.parent.mkdir()
    d = load_denoiser(checkpoint)
    plain = table(d, None)
    first = table(d, ledger)
    assert first.values == plain.values and first.nfe == plain.nfe == [[2], [2]]
    data = json.loads(ledger.read_text())
    assert len(data["cells"]) == 2 and len(data["identities"]) == 1
    assert {c["sampling"]["eta"] for c in data["cells"].values()} == {0.0, 1.0}
    assert all(c["num"] == 6 and c["seed"] == 5 and c["nfe"] == 2 for c in data["cells"].values())

    monkeypatch.setattr(experiments, "generate_samples", no_sampling)
    again = table(load_denoiser(checkpoint), ledger)  # a fresh process would load the same way
    assert again.values == plain.values and again.nfe == plain.nfe
    assert any("2 cells taken from it, 0 added" in note for note in again.notes)
    shown = ddim_table(d, scorer(), etas=[0.0, 1.0], steps_list=[2, 3], num=6, seed=5, batch_size=4,
                       ledger_path=ledger, ledger_only=True)  # shows what is there, samples nothing
    assert shown.values == [[plain.values[0][0], None], [plain.values[1][0], None]]
    assert any("not sampled (ledger only): 0@3, 1@3" in note for note in shown.notes)
    with pytest.raises(DiffkitError, match="ledger_only needs a ledger"):
        ddim_table(d, scorer(), etas=[0.0], steps_list=[2], num=6, ledger_only=True)
    # a typo must not write an empty table
    with pytest.raises(DiffkitError, match="does not exist; --ledger-only shows"):
        ddim_table(d, scorer(), etas=[0.0], steps_list=[2], num=6, ledger_only=True,
                   ledger_path=str(ledger) + ".typo")
    monkeypatch.undo()

    more = table(d, ledger, steps=(2, 3))  # only the new column is sampled
    assert [row[0] for row in more.values] == [row[0] for row in plain.values]
    assert any("2 cells taken from it, 2 added" in note for note in more.notes)
    assert len(json.loads(ledger.read_text())["cells"]) == 4


def test_other_weights_evaluator_reference_or_count_miss_the_ledger(checkpoint, tmp_path):
    ledger = tmp_path / "ledger.json"
    d = load_denoiser(checkpoint)
    table(d, ledger)
    assert any("0 cells taken" in n for n in table(d, ledger, the_scorer=scorer(seed=1)).notes)  # evaluator
    assert any("0 cells taken" in n for n in table(d, ledger, the_scorer=scorer(reference_seed=2)).notes)
    other = load_denoiser(checkpoint)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert any("0 cells taken" in n for n in table(other, ledger).notes)
    counted = ddim_table(d, scorer(), etas=[0.0], steps_list=[2], num=7, seed=5, batch_size=4, ledger_path=ledger)
    assert any("0 cells taken" in n for n in counted.notes)
    assert len(json.loads(ledger.read_text())["identities"]) == 4


def test_a_broken_ledger_is_refused_in_one_line(checkpoint, tmp_path, capsys):
    d = load_denoiser(checkpoint)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DiffkitError, match="not readable JSON"):
        table(d, bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DiffkitError, match="not a diffkit score ledger"):
        table(d, bad)
    assert bad.read_text() == json.dumps({"format": "something else"})  # left as it was

    evaluator = tmp_path / "ev.safetensors"
    assert main(["train-evaluator", "--dataset", "digits", "--img-size", 8, "--epochs", 1,
                 "--out", evaluator, "--device", "cpu"]) == 0
    common = ["experiment", "ddim-table", "--checkpoint", checkpoint, "--etas", "0", "--steps", "2", "--num", 6,
              "--batch-size", 4, "--metric", "confidence", "--evaluator", evaluator, "--device", "cpu"]
    assert main([*common, "--ledger", tmp_path / "cli.json", "--out", tmp_path / "a"]) == 0
    assert main([*common, "--ledger", tmp_path / "cli.json", "--out", tmp_path / "b"]) == 0
    a, b = (json.loads((tmp_path / n / "ddim_table.json").read_text()) for n in "ab")
    assert a["values"] == b["values"] and any("1 cells taken from it, 0 added" in n for n in b["notes"])
    capsys.readouterr()
    one_line_error(capsys, [*common, "--ledger", bad, "--out", tmp_path / "c"], "score ledger", str(bad))
    one_line_error(capsys, [*common, "--ledger-only", "--out", tmp_path / "c"], "--ledger-only needs --ledger")
    assert main([*common, "--steps", "2,3", "--ledger", tmp_path / "cli.json", "--ledger-only",
                 "--out", tmp_path / "e"]) == 0
    assert json.loads((tmp_path / "e" / "ddim_table.json").read_text())["values"] == [[a["values"][0][0], None]]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, [*common, "--ledger", blocker / "sub" / "l.json", "--out", tmp_path / "d"],
                   "score ledger directory", str(blocker / "sub"))


def test_weights_only_export_gives_the_same_network_and_cannot_resume(checkpoint, tmp_path, capsys):
    from diffkit.checkpoint import load_checkpoint, tensors_digest
    from diffkit.sample_cache import denoiser_identity
    out = tmp_path / "weights.safetensors"
    assert main(["convert", "--checkpoint", checkpoint, "--out", out]) == 0
    assert "weights-only checkpoint" in capsys.readouterr().out
    tensors, meta = load_checkpoint(out)
    full, full_meta = load_checkpoint(checkpoint)
    assert sorted({k.split(".")[0] for k in tensors}) == ["model", "schedule"]
    assert "step" not in meta and meta["exported_from"] == {"step": full_meta["step"], "weights": "ema"}
    ema = {k[4:]: v for k, v in full.items() if k.startswith("ema.")}
    assert all(torch.equal(tensors[f"model.{k}"], ema.get(k, full[f"model.{k}"]))
               for k in (k[6:] for k in full if k.startswith("model.")))
    a, b = load_denoiser(checkpoint), load_denoiser(out)
    assert denoiser_identity(a) == denoiser_identity(b)  # a ledger's cells match either file
    assert tensors_digest(a.model.state_dict()) == tensors_digest(b.model.state_dict())
    assert main(["convert", "--checkpoint", checkpoint, "--out", tmp_path / "raw.safetensors", "--no-ema"]) == 0
    raw = load_checkpoint(tmp_path / "raw.safetensors")[0]
    assert all(torch.equal(raw[k], full[k]) for k in raw if k.startswith("model."))
    cfg = TrainConfig.from_dict({**TINY, "save_weight_dir": str(tmp_path / "c"), "sampled_dir": str(tmp_path / "s")})
    with pytest.raises(DiffkitError, match="not a training checkpoint"):
        Trainer(cfg, progress=False, log=lambda *_: None).load(out)
    capsys.readouterr()
    one_line_error(capsys, ["convert", "--checkpoint", checkpoint, "--out", tmp_path / "w.pt"], ".safetensors")
    one_line_error(capsys, ["convert", "--checkpoint", checkpoint, "--out", checkpoint], "checkpoint itself")


def test_two_runs_filling_one_ledger_keep_each_others_cells(checkpoint, tmp_path):
    ledger = tmp_path / "ledger.json"
    d = load_denoiser(checkpoint)
    from diffkit.score_ledger import ScoreLedger
    first, second = ScoreLedger(ledger, d, scorer()), ScoreLedger(ledger, d, scorer())  # both opened before any cell
    first.put({"sampler": "ddim", "steps": 2, "eta": 0.0}, 6, 5, {"confidence": {"value": 0.5}}, 2)
    second.put({"sampler": "ddim", "steps": 2, "eta": 1.0}, 6, 5, {"confidence": {"value": 0.7}}, 2)
    cells = json.loads(ledger.read_text())["cells"].values()
    assert sorted(c["sampling"]["eta"] for c in cells) == [0.0, 1.0]
    assert ScoreLedger(ledger, d, scorer()).get({"sampler": "ddim", "steps": 2, "eta": 0.0}, 6, 5)[0] == \
        {"confidence": {"value": 0.5}}


def test_the_same_sampling_is_one_cell_in_both_tables(checkpoint, tmp_path, monkeypatch):
    from diffkit.experiments import sampler_table
    ledger = tmp_path / "ledger.json"
    d = load_denoiser(checkpoint)
    first = table(d, ledger)  # ddim eta 0 and eta 1 at 2 steps
    data = json.loads(ledger.read_text())
    data["cells"] = {f"old-key-{i}": c for i, c in enumerate(data["cells"].values())}  # keys are derived data
    ledger.write_text(json.dumps(data))
    monkeypatch.setattr(experiments, "generate_samples", no_sampling)
    plain_ddim = sampler_table(d, scorer(), samplers=["ddim"], steps_list=[2], num=6, seed=5, batch_size=4,
                               ledger_path=ledger)  # ddim's eta = 0 is its default: the same cell
    assert plain_ddim.values == [[first.values[0][0]]]


def test_nfe_after_an_out_of_memory_retry_is_the_nfe_per_sample(checkpoint, tmp_path):
    """A network out of memory on batches over 2: the table's batches of 4 are drawn in batches of
    2 (three, not two), with the same samples; the table and the ledger still say 2 network
    evaluations per sample of 2 ddim steps."""
    plain = table(load_denoiser(checkpoint), None)
    d = load_denoiser(checkpoint)
    net = d.net

    def small_batches_only(x, t, **cond):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return net(x, t, **cond)
    d.net = small_batches_only
    ledger = tmp_path / "ledger.json"
    retried = table(d, ledger)
    assert retried.values == plain.values and retried.nfe == plain.nfe == [[2], [2]]
    assert [c["nfe"] for c in json.loads(ledger.read_text())["cells"].values()] == [2, 2]


def test_canonical_settings_drop_only_what_is_at_its_default():
    from diffkit.samplers.registry import canonical_settings
    ddim = {"sampler": "ddim", "steps": 10, "spacing": "linear", "final": "zero"}
    assert canonical_settings({"sampler": "ddim", "steps": 10, "eta": 0}) == ddim
    assert canonical_settings({"sampler": "ddim", "steps": 10, "eta": 0.5, "spacing": "linear",
                               "thresholding": None}) == {**ddim, "eta": 0.5}
    assert canonical_settings({"sampler": "ddim", "steps": 10, "eta": "sigma_hat", "spacing": "quadratic"}) == \
        {**ddim, "eta": "sigma_hat", "spacing": "quadratic"}
    # a registered variant's option (unipc is bh2, order 2) against the function's own default
    from diffkit.samplers import REGISTRY
    unipc = {"sampler": "unipc", "steps": 5, "spacing": "logsnr_graded", "final": REGISTRY["unipc"].default_final}
    assert canonical_settings({"sampler": "unipc", "steps": 5, "solver_type": "bh2"}) == unipc
    assert canonical_settings({"sampler": "unipc", "steps": 5, "solver_type": "bh1"})["solver_type"] == "bh1"
    assert canonical_settings({"sampler": "dpm-solver++-2m", "steps": 5, "spacing": "logsnr"}) == \
        {"sampler": "dpm-solver++-2m", "steps": 5, "spacing": "logsnr", "final": "zero"}
    # the grid is written out: a cell of the old default grid keeps its own key
    other = "zero" if unipc["final"] == "sigma_min" else "sigma_min"
    assert canonical_settings({"sampler": "unipc", "steps": 5, "final": other}) != unipc


def test_a_damaged_cell_is_a_one_line_error(checkpoint, tmp_path):
    ledger = tmp_path / "new" / "ledger.json"  # the folder is made on the first write
    d = load_denoiser(checkpoint)
    table(d, ledger)
    data = json.loads(ledger.read_text())
    next(iter(data["cells"].values())).pop("sampling")
    ledger.write_text(json.dumps(data))
    with pytest.raises(DiffkitError, match="damaged cell .*'sampling'"):
        table(d, ledger)


@pytest.mark.parametrize("damage", ["no scores", "empty scores", "a string", "identities a list", "no metric"])
def test_every_kind_of_hand_damage_is_a_one_line_error(checkpoint, tmp_path, damage):
    ledger = tmp_path / "ledger.json"
    d = load_denoiser(checkpoint)
    table(d, ledger)
    data = json.loads(ledger.read_text())
    cell = next(iter(data["cells"].values()))
    if damage == "no scores":
        cell.pop("scores")
    elif damage == "empty scores":
        cell["scores"] = {}
    elif damage == "a string":
        cell["scores"]["confidence"] = {k: "high" for k in cell["scores"]["confidence"]}
    elif damage == "identities a list":
        data["identities"] = []
    else:
        cell["scores"] = {"other-metric": {"value": 1.0}}
    ledger.write_text(json.dumps(data))
    with pytest.raises(DiffkitError, match="damaged") as err:
        table(d, ledger)
    assert "\n" not in str(err.value)


def test_a_nan_cell_written_as_null_reads_back_as_nan(checkpoint, tmp_path):
    ledger = tmp_path / "ledger.json"
    d = load_denoiser(checkpoint)
    table(d, ledger)
    data = json.loads(ledger.read_text())
    for cell in data["cells"].values():
        cell["scores"]["confidence"] = {k: None for k in cell["scores"]["confidence"]}  # json writes NaN as null
    ledger.write_text(json.dumps(data))
    result = table(d, ledger)
    assert all(v != v for row in result.values for v in row)  # NaN, taken from the ledger, not re-sampled


def test_the_committed_ledger_reads_back():
    """Cells hold true/false fields (fd-classifier's rank_deficient): the damage check refused all
    39 cells of the committed MNIST ledger, and every rerun of benchmarks/mnist_tables.sh."""
    from pathlib import Path

    from diffkit.score_ledger import ScoreLedger
    ledger = ScoreLedger.__new__(ScoreLedger)
    ledger.path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "mnist_tables.json"
    cells = ledger._read()["cells"]
    assert len(cells) >= 39
    assert any(isinstance(field, bool) for cell in cells.values() for fields in cell["scores"].values()
               for field in fields.values())
