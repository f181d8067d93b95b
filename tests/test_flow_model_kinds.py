"""Flow matching (docs/flow_matching.md) on the other kinds of model the docs promise: a time-series
flow model (diffkit sample, diffkit edit --series forecast), a latent text-conditional flow model
(diffkit sample --prompt --guidance-scale), and fine-tuning a flow checkpoint with --init-from (the
flow fields come from the source; a changed flow_shift is a one-line refusal). Tiny nets, few steps."""
import csv

import numpy as np
import pytest
import torch

import diffkit
from diffkit import checkpoint as ckpt
from diffkit.autoencoder_training import save_autoencoder
from diffkit.cli import main
from diffkit.data import load_dataset
from diffkit.loading import load_denoiser
from diffkit.models.autoencoder import Autoencoder, AutoencoderConfig, estimate_scale_factor
from diffkit.schedule import NoiseSchedule

FLOW = ["--set=prediction_type=flow_prediction", "--set=schedule=flow", "--set=flow_shift=2.0",
        "--set=timestep_sampler=logit-normal"]
RUN = ["--no-progress", "--no-sample", "--device", "cpu"]
SERIES = ["--set=num_series=32", "--set=seq_length=8", "--set=in_channels=3", "--set=channel=8",
          "--set=channel_mult=1,2", "--set=num_res_blocks=1", "--set=batch_size=8", "--set=T=50",
          "--set=sample_steps=3", "--set=dropout=0", "--set=lr=0.05",  # lr: its output layer leaves 0
          "--set=warmup_fraction=0"]
TEXT = ["--set=img_size=16", "--set=channel=16", "--set=channel_mult=[1,2]", "--set=attn=[1]",
        "--set=num_res_blocks=1", "--set=batch_size=8", "--set=num_heads=1", "--set=T=100", "--set=sample_steps=2",
        "--set=text_conditioning=true", "--set=context_dim=16", "--set=text_width=16", "--set=text_layers=1",
        "--set=text_heads=2"]


def is_flow(path, shift=2.0, T=50):
    """The checkpoint loads as a flow model on NoiseSchedule.flow(T, shift)'s schedule."""
    d = load_denoiser(path)
    return d.prediction_type == "flow_prediction" and torch.allclose(
        d.schedule.alphas_cumprod, NoiseSchedule.flow(T, shift=shift).alphas_cumprod)


@pytest.fixture(scope="module")
def series_flow(tmp_path_factory):
    """``diffkit train --dataset sines`` of a flow model: 2 steps of a tiny 1-D U-Net (3 channels, length 8)."""
    run = tmp_path_factory.mktemp("sines") / "run"
    assert main(["train", "--dataset", "sines", "--out", str(run), "--steps", "2", *RUN, *SERIES, *FLOW]) == 0
    return run / "checkpoints" / "latest.safetensors"


def test_a_time_series_flow_model_samples_and_forecasts(series_flow, tmp_path, capsys):
    assert is_flow(series_flow)
    code = main(["sample", "--checkpoint", str(series_flow), "--sampler", "euler", "--steps", "3", "--num", "2",
                 "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    series = np.load(tmp_path / "s.npy")
    assert series.shape == (2, 3, 8) and np.isfinite(series).all()
    history = np.sin(np.arange(6)[:, None] / 2 + np.arange(3)[None]) * 0.5
    body = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in history)
    (tmp_path / "h.csv").write_text("a,b,c\n" + body)
    code = main(["edit", "--checkpoint", str(series_flow), "--series", str(tmp_path / "h.csv"), "--horizon", "2",
                 "--num", "2", "--steps", "3", "--seed", "7", "--out", str(tmp_path / "f.csv"), "--no-progress",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "forecast 2 rows after 6" in captured.out, captured.out
    with open(tmp_path / "f.csv", newline="") as f:
        rows = list(csv.reader(f))
    table = np.array([[float(v) for v in row] for row in rows[1:]])
    assert rows[0] == ["sample", "a", "b", "c"] and table.shape == (2 * 2, 4) and np.isfinite(table).all()
    # the CLI's defaults (ddpm, reconstruction weight 1) on the flow denoiser; sines: the model's units
    api = diffkit.forecast(load_denoiser(series_flow), torch.from_numpy(history.T).float()[None].expand(2, -1, -1), 2,
                           steps=3, seed=7, progress=False)
    np.testing.assert_allclose(table[:, 1:], api.double().permute(0, 2, 1).reshape(4, 3).numpy(), rtol=1e-6, atol=1e-6)
    assert np.ptp(table[:, 1:]) > 0


@pytest.fixture(scope="module")
def text_flow(tmp_path_factory):
    """A latent text-conditional flow model: 2 steps on the embedded digits through a tiny random f=2 autoencoder."""
    root = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                                       latent_channels=2, attn_middle=False))
    save_autoencoder(root / "ae.safetensors", ae,
                     estimate_scale_factor(ae, load_dataset("digits").images[:64].float() / 127.5 - 1))
    assert main(["train", "--dataset", "digits", "--out", str(root / "run"), "--steps", "2", *RUN, *TEXT, *FLOW,
                 f"--set=autoencoder={root / 'ae.safetensors'}"]) == 0
    return root / "run" / "checkpoints" / "latest.safetensors"


def test_a_text_conditional_flow_model_samples_with_prompts_and_guidance(text_flow, tmp_path, capsys):
    from PIL import Image
    assert is_flow(text_flow, T=100)
    tensors, meta = ckpt.load_checkpoint(text_flow)
    assert meta.get("text")
    # the captions reached the flow loss: every parameter, the text encoder and cross-attention included,
    # got a gradient and so has AdamW state (a parameter off the loss's graph has none)
    params = sum(1 for _ in load_denoiser(text_flow).model.parameters())
    assert len([k for k in tensors if k.startswith("optim.") and k.endswith(".step")]) == params > 0
    code = main(["sample", "--checkpoint", str(text_flow), "--prompt", "the digit seven", "--prompt",
                 "a handwritten 3", "--guidance-scale", "3", "--sampler", "dpm-solver++-2m", "--steps", "2",
                 "--num", "4", "--out", str(tmp_path / "p.png"), "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    image = np.asarray(Image.open(tmp_path / "p.png"))
    assert image.shape == (2 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 2 prompts x 2, decoded to 16x16 pixels
    assert image[2:18, 2:18].std() > 0  # not a blank (NaN) tile


def test_init_from_a_flow_checkpoint_keeps_its_flow_fields(series_flow, tmp_path, capsys):
    """The fine-tuned run is the source's flow model (prediction_type, schedule, flow_shift, and the
    network's fields) though none is given; a different flow_shift is refused in one line, writing nothing."""
    out = tmp_path / "ft"
    assert main(["train", "--dataset", "sines", "--init-from", str(series_flow), "--out", str(out), "--steps", "1",
                 *RUN, "--set=num_series=32", "--set=batch_size=8"]) == 0
    tuned = out / "checkpoints" / "latest.safetensors"
    config = ckpt.load_checkpoint(tuned)[1]["config"]
    source = ckpt.load_checkpoint(series_flow)[1]["config"]
    for key in ("prediction_type", "schedule", "flow_shift", "T", "channel", "channel_mult", "seq_length"):
        assert config[key] == source[key], key
    assert (config["prediction_type"], config["schedule"], config["flow_shift"]) == ("flow_prediction", "flow", 2.0)
    assert is_flow(tuned)
    capsys.readouterr()
    code = main(["train", "--dataset", "sines", "--init-from", str(series_flow), "--out", str(tmp_path / "no"),
                 "--steps", "1", *RUN, "--set=flow_shift=3.0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "flow_shift=3.0 is not allowed with --init-from" in err and "(flow_shift=2.0)" in err, err
    assert not (tmp_path / "no").exists()
