"""diffkit's DiT against diffusers' own DiTTransformer2DModel (Peebles & Xie 2023; docs/models.md): the same
output for the same weights, x, t and labels; MAE's position embedding against diffusers' function; the weight
map both ways and the refusal of a model whose blocks' embedders differ. Tiny random models, nothing downloaded."""
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.models.dit import DiT, DiTConfig, sincos_position_embedding  # noqa: E402

TINY = dict(img_size=8, in_channels=3, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=8)


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
    included; the learned-variance head too. On the CPU the two agree to the last bit (the timestep
    frequencies rounded in diffusers' order); 1e-6 of the output's scale is asserted."""
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
                                       rtol=0, atol=1e-6 * null.abs().max().item())
        else:
            ours, expected = net(x, t), theirs(x, t, class_labels=torch.zeros(4, dtype=torch.long)).sample
    assert ours.shape == (4, 6 if conditional else 3, 8, 8)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=0, atol=1e-6 * expected.abs().max().item())


def test_position_embedding_is_maes_as_diffusers_computes_it():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    for width, grid in ((16, 4), (32, 3)):
        theirs = get_2d_sincos_pos_embed(width, grid, base_size=grid, output_type="pt").float()
        torch.testing.assert_close(sincos_position_embedding(width, grid), theirs, rtol=0, atol=1e-7)


def test_weights_round_trip_and_a_model_whose_blocks_differ_is_refused():
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


def test_convert_from_diffusers_reads_a_bare_dit_transformer_folder(tmp_path, capsys):
    """diffkit convert imports a DiTTransformer2DModel folder (no scheduler beside it: DDPM's linear schedule,
    with a warning) to a diffkit DiT checkpoint with the same weights (tests/test_dit_pipeline.py: folders)."""
    from diffkit.errors import DiffkitWarning
    from diffkit.interop.dit import to_diffusers
    from diffkit.loading import load_denoiser
    from diffkit.cli import main
    net = randomize(DiT(DiTConfig(**TINY, num_classes=3)))
    to_diffusers(net).save_pretrained(tmp_path / "dit")
    with pytest.warns(DiffkitWarning, match="no scheduler config"):
        assert main(["convert", "--from-diffusers", str(tmp_path / "dit"), "--out",
                     str(tmp_path / "x.safetensors")]) == 0
    back = load_denoiser(tmp_path / "x.safetensors").model
    assert back.config == net.config
    for key, value in net.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
