"""The DiT backbone (Peebles & Xie 2023; docs/models.md): adaLN-Zero's identity start, the config's
one-line refusals, and diffkit train / sample end to end on a tiny DiT (tests/test_dit_diffusers.py: the
forward against diffusers' DiTTransformer2DModel)."""
import pytest
import torch

from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.models.dit import DiT, DiTConfig
from diffkit.models.network import build_network
from test_cli_errors import one_line_error

TINY = dict(img_size=8, in_channels=3, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=8)
RUN = ["--no-progress", "--no-sample", "--device", "cpu", "--dataset", "digits", "--steps", "2"]
DIT = ["--set=network=dit", "--set=img_size=8", "--set=patch_size=2", "--set=num_layers=1", "--set=num_heads=2",
       "--set=attention_head_dim=4", "--set=batch_size=4", "--set=T=20", "--set=sample_steps=2"]


def test_adaln_zero_starts_every_block_as_the_identity_and_the_output_at_zero():
    """DiT Sec. 3.1: the zero-initialised modulation makes each block the identity and the final layer 0."""
    net = DiT(DiTConfig(**TINY, num_classes=3))
    h = torch.randn(2, 16, 16)
    c = torch.randn(2, 16)
    for block in net.blocks:
        assert torch.equal(block(h, c), h)
    assert torch.equal(net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])),
                       torch.zeros(2, 3, 8, 8))


def test_initialisation_is_dits():
    """DiT's code (``initialize_weights``): every linear layer and the patch projection (as a (D, C p p) matrix)
    Xavier-uniform, U(+-sqrt(6 / (fan_in + fan_out))), with zero biases; the timestep MLP's and the class table's
    weights N(0, 0.02^2); the adaLN-Zero regressions and the output layer zero. A wide model, so that the
    sample spread tells Xavier (std bound / sqrt 3) from PyTorch's default bound 1 / sqrt(fan_in)."""
    torch.manual_seed(0)
    net = DiT(DiTConfig(img_size=8, in_channels=3, patch_size=2, num_layers=1, num_attention_heads=4,
                        attention_head_dim=64, num_classes=1000))
    zero = {"blocks.0.modulation", "out_modulation", "out_proj"}
    normal = {"time_embed.linear_1", "time_embed.linear_2"}
    checked = set()
    for name, module in net.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w = module.weight.detach().reshape(module.weight.shape[0], -1)
        assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        if name in zero:
            assert torch.equal(w, torch.zeros_like(w)), name
        elif name in normal:
            assert abs(w.std().item() / 0.02 - 1) < 0.03 and abs(w.mean().item()) < 1e-3, name
        else:
            bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
            assert w.abs().max().item() <= bound and abs(w.std().item() / (bound / 3 ** 0.5) - 1) < 0.03, name
        checked.add(name)
    assert {"patch_embed", "blocks.0.qkv", "blocks.0.proj", "blocks.0.mlp.0", "blocks.0.mlp.2"} < checked
    table = net.class_embed.weight.detach()
    assert table.shape == (1001, 256) and abs(table.std().item() / 0.02 - 1) < 0.03


@pytest.mark.parametrize("freq_shift, denominator", [(0, 128), (1, 127)])
def test_timestep_frequencies_of_dits_code_and_of_diffusers(freq_shift, denominator):
    """256 features [cos(t w_i), sin(t w_i)], w_i = 10000^(-i/128) in DiT's TimestepEmbedder (freq_shift 0) and
    10000^(-i/127) in diffusers' (Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1))."""
    from diffkit.models.layers import timestep_embedding
    t = torch.tensor([0.0, 17.0, 999.0])
    args = t.double()[:, None] * 10000.0 ** (-torch.arange(128, dtype=torch.float64) / denominator)
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    torch.testing.assert_close(timestep_embedding(t, 256, freq_shift=freq_shift).double(), expected, rtol=0, atol=2e-4)
    net = DiT(DiTConfig(**TINY, freq_shift=freq_shift))
    assert torch.equal(net.time_embed(t), net.time_embed.linear_2(torch.nn.functional.silu(
        net.time_embed.linear_1(timestep_embedding(t, 256, freq_shift=freq_shift)))))


def test_config_describes_a_dit_that_build_network_builds():
    cfg = TrainConfig(network="dit", img_size=8, num_heads=2, attention_head_dim=8, num_layers=3,
                      conditional=True, learned_variance=True, loss="hybrid", in_channels=1)
    description = cfg.to_unet_kwargs()
    assert description == {"network": "dit", "img_size": 8, "in_channels": 1, "patch_size": 2, "num_layers": 3,
                           "num_attention_heads": 2, "attention_head_dim": 8, "freq_shift": 1,
                           "learned_variance": True, "num_classes": 10}
    net = build_network(description)
    assert isinstance(net, DiT) and net.config.hidden_size == 16 and net.class_embed.num_embeddings == 11
    assert "network" not in TrainConfig().to_unet_kwargs()  # the U-Net's description is unchanged
    TrainConfig(network="dit", dropout=0.0)  # no dropout, as DiT: allowed (the demo's config has it)


@pytest.mark.parametrize("sets, message", [
    (["network=dit", "img_size=8", "patch_size=3"], "patch_size=3 must divide img_size=8 (network='dit' cuts"),
    (["network=dit", "num_heads=3", "attention_head_dim=3"], "= 9 must be a multiple of 4"),
    (["network=dit", "channel=64"], "channel=64 applies to the U-Net"),
    (["network=dit", "text_conditioning=true"], "text_conditioning=True is not available with network='dit'"),
    (["network=dit", "img_size=16", "super_res_from=8"], "super_res_from=8 is not available with network='dit'"),
    (["network=dit", "objective=consistency-training"], "objective='consistency-training' is not available"),
    (["network=dit", "scale_shift_norm=true"], "scale_shift_norm=True applies to the U-Net"),
    (["network=dit", "lora_rank=4"], "lora_rank=4 is not available with network='dit'"),
    (["network=dit", "dropout=0.3"], "dropout=0.3 is not used by network='dit' (DiT's blocks have no dropout"),
    (["num_layers=4"], "num_layers=4 applies to network='dit'"),
    (["network=vit"], "network='vit' is not allowed; choose one of: unet, dit"),
])
def test_bad_dit_settings_are_one_line_errors_before_any_output(sets, message, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, "train", *RUN, *[f"--set={s}" for s in sets], "--out", str(out))
    assert message in line, line
    assert not out.exists()


def test_a_time_series_run_refuses_the_dit(tmp_path, capsys):
    line = one_line_error(capsys, "train", "--dataset", "sines", "--set=network=dit", "--out", str(tmp_path / "r"))
    assert "network='dit' applies to images" in line, line
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    """diffkit train of a tiny class-conditional DiT with a learned variance (DiT's hybrid loss), 2 steps."""
    run = tmp_path_factory.mktemp("dit") / "run"
    assert main(["train", *RUN, *DIT, "--set=conditional=true", "--set=learned_variance=true",
                 "--set=loss=hybrid", "--out", str(run)]) == 0
    return run / "checkpoints"


def test_train_and_sample_a_class_conditional_dit(dit_run, tmp_path, capsys):
    from diffkit.loading import load_denoiser
    d = load_denoiser(dit_run)
    assert isinstance(d.model, DiT) and d.learned_variance and d.model.config.num_classes == 10
    assert d.meta["unet"]["network"] == "dit"
    code = main(["sample", "--checkpoint", str(dit_run), "--steps", "2", "--num", "2", "--guidance-scale", "2",
                 "--class", "3", "7", "--sampler", "ddpm", "--out", str(tmp_path / "s.png"), "--no-progress",
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "s.png").is_file() and "classes [3, 7]" in captured.out, captured.out


def test_train_and_sample_an_unconditional_dit(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, *DIT, "--out", str(run)]) == 0
    assert "M-parameter DiT on digits" in capsys.readouterr().out
    code = main(["sample", "--checkpoint", str(run / "checkpoints"), "--steps", "2", "--num", "2",
                 "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "s.png").is_file()


def test_init_from_fine_tunes_a_dit(dit_run, tmp_path, capsys):
    """--init-from takes the DiT's network fields from its checkpoint and starts from its EMA weights."""
    from diffkit.loading import load_denoiser
    run = tmp_path / "ft"
    assert main(["train", "--init-from", str(dit_run), "--no-progress", "--no-sample", "--device", "cpu",
                 "--dataset", "digits", "--steps", "1", "--set=sample_steps=2", "--out", str(run)]) == 0
    assert f"DiT from {dit_run / 'latest.safetensors'}" in capsys.readouterr().out
    tuned = load_denoiser(run / "checkpoints", use_ema=False)
    assert isinstance(tuned.model, DiT) and tuned.meta["unet"] == load_denoiser(dit_run).meta["unet"]


def test_convert_exports_a_trained_dit_as_a_dit_pipeline_and_back(dit_run, tmp_path, capsys):
    """diffkit convert --to-diffusers of a trained DiT writes a DiTPipeline folder (tests/test_dit_pipeline.py:
    the diffusers side); --from-diffusers of it gives back its EMA network bit for bit, and diffkit sample reads
    the folder itself with class guidance (a DiT with 10 classes exports with the null-label warning)."""
    pytest.importorskip("diffusers")
    from diffkit.errors import DiffkitWarning
    from diffkit.loading import load_denoiser
    out = tmp_path / "exported"
    with pytest.warns(DiffkitWarning, match="DiTPipeline passes 1000 as the null label"):
        assert main(["convert", "--checkpoint", str(dit_run), "--to-diffusers", str(out)]) == 0
    assert "DiTPipeline.from_pretrained(" in capsys.readouterr().out
    assert main(["convert", "--from-diffusers", str(out), "--out", str(tmp_path / "back.safetensors")]) == 0
    ours, back = load_denoiser(dit_run), load_denoiser(tmp_path / "back.safetensors")
    assert back.meta["unet"] == ours.meta["unet"]
    for key, value in ours.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    torch.testing.assert_close(back.schedule.betas, ours.schedule.betas, rtol=1e-12, atol=0)
    assert main(["sample", "--checkpoint", str(out), "--class", "2", "--guidance-scale", "2", "--steps", "2",
                 "--num", "2", "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("sets, prediction", [
    (["--set=prediction_type=edm", "--set=schedule=edm", "--set=conditional=true"], "edm"),
    (["--set=prediction_type=flow_prediction", "--set=schedule=flow"], "flow_prediction"),
    (["--set=prediction_type=v_prediction"], "v_prediction"),
])
def test_a_dit_trains_and_samples_with_edm_flow_and_v(sets, prediction, tmp_path, capsys):
    """The DiT under the other parameterisations (EDM's preconditioning merged beside it included): the
    checkpoint records the DiT and the prediction type, and diffkit sample draws from it (heun: EDM's sampler)."""
    from diffkit.loading import load_denoiser
    run = tmp_path / "run"
    assert main(["train", *RUN, *DIT, *sets, "--out", str(run)]) == 0
    d = load_denoiser(run / "checkpoints")
    assert isinstance(d.model, DiT) and d.meta["config"]["prediction_type"] == prediction
    code = main(["sample", "--checkpoint", str(run / "checkpoints"), "--steps", "2", "--num", "2", "--sampler", "heun",
                 "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "s.png").is_file()
