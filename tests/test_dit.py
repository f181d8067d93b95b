"""The DiT backbone (Peebles & Xie 2023; docs/models.md): its forward against diffusers' own
DiTTransformer2DModel with the same weights, the MAE position embedding against diffusers' function,
adaLN-Zero's identity start, the config's one-line refusals, and diffkit train / sample end to end on a
tiny DiT."""
import numpy as np
import pytest
import torch

from diffkit.cli import main
from diffkit.config import TrainConfig
from diffkit.models.dit import DiT, DiTConfig, sincos_position_embedding
from diffkit.models.network import build_network
from test_cli_errors import one_line_error

TINY = dict(img_size=8, in_channels=3, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=8)
RUN = ["--no-progress", "--no-sample", "--device", "cpu", "--dataset", "digits", "--steps", "2"]
DIT = ["--set=network=dit", "--set=img_size=8", "--set=patch_size=2", "--set=num_layers=1", "--set=num_heads=2",
       "--set=attention_head_dim=4", "--set=batch_size=4", "--set=T=20", "--set=sample_steps=2"]


def randomize(net, seed=0):
    """Random weights everywhere (the zero-initialised modulation and output too), so that no zero hides a
    difference between two architectures."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


@pytest.mark.parametrize("conditional", [True, False])
def test_dit_computes_what_diffusers_computes_with_its_weights(conditional):
    """A diffkit DiT and diffusers' DiTTransformer2DModel holding the mapped weights (the shared embedder
    copied into every block) give the same output for the same x, t and labels, the null label (y=None)
    included; the learned-variance head too."""
    pytest.importorskip("diffusers")
    from diffkit.interop.dit import to_diffusers
    cfg = DiTConfig(**TINY, num_classes=10 if conditional else None, learned_variance=conditional)
    net = randomize(DiT(cfg)).eval()
    theirs = to_diffusers(net)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 17, 500, 999])
    with torch.no_grad():
        if conditional:
            labels = torch.tensor([3, 0, 9, 10])  # 10: the null label of classifier-free guidance
            ours = net(x, t, labels)
            expected = theirs(x, t, class_labels=labels).sample
            null = net(x, t)  # y=None: the null label for every sample
            np.testing.assert_allclose(null.numpy(), theirs(x, t, class_labels=torch.full((4,), 10)).sample.numpy(),
                                       rtol=0, atol=1e-5 * null.abs().max().item())
        else:
            ours, expected = net(x, t), theirs(x, t, class_labels=torch.zeros(4, dtype=torch.long)).sample
    assert ours.shape == (4, 6 if conditional else 3, 8, 8)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=0, atol=1e-5 * expected.abs().max().item())


def test_position_embedding_is_maes_as_diffusers_computes_it():
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    for width, grid in ((16, 4), (32, 3)):
        theirs = get_2d_sincos_pos_embed(width, grid, base_size=grid, output_type="pt").float()
        torch.testing.assert_close(sincos_position_embedding(width, grid), theirs, rtol=0, atol=1e-7)


def test_weights_round_trip_and_a_model_whose_blocks_differ_is_refused():
    pytest.importorskip("diffusers")
    from diffkit.errors import DiffkitError
    from diffkit.interop.dit import from_diffusers, to_diffusers
    net = randomize(DiT(DiTConfig(**TINY, num_classes=5, learned_variance=True)))
    theirs = to_diffusers(net)
    back = from_diffusers(theirs)
    assert back.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    with torch.no_grad():
        theirs.transformer_blocks[1].norm1.emb.timestep_embedder.linear_2.bias[0] += 1e-3
    with pytest.raises(DiffkitError, match="block 1's timestep/class embedder .* differs from block 0's"):
        from_diffusers(theirs)


def test_adaln_zero_starts_every_block_as_the_identity_and_the_output_at_zero():
    """DiT Sec. 3.1: the zero-initialised modulation makes each block the identity and the final layer 0."""
    net = DiT(DiTConfig(**TINY, num_classes=3))
    h = torch.randn(2, 16, 16)
    c = torch.randn(2, 16)
    for block in net.blocks:
        assert torch.equal(block(h, c), h)
    assert torch.equal(net(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])),
                       torch.zeros(2, 3, 8, 8))


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


@pytest.mark.parametrize("sets, message", [
    (["network=dit", "img_size=8", "patch_size=3"], "patch_size=3 must divide img_size=8 (network='dit' cuts"),
    (["network=dit", "num_heads=3", "attention_head_dim=3"], "= 9 must be a multiple of 4"),
    (["network=dit", "channel=64"], "channel=64 applies to the U-Net"),
    (["network=dit", "text_conditioning=true"], "text_conditioning=True is not available with network='dit'"),
    (["network=dit", "img_size=16", "super_res_from=8"], "super_res_from=8 is not available with network='dit'"),
    (["network=dit", "objective=consistency-training"], "objective='consistency-training' is not available"),
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


def test_convert_to_diffusers_refuses_a_dit_in_one_line(dit_run, tmp_path, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "exported"
    line = one_line_error(capsys, "convert", "--checkpoint", str(dit_run), "--to-diffusers", str(out))
    assert "is a DiT; --to-diffusers writes DDPMPipeline folders of U-Nets" in line, line
    assert not out.exists()
