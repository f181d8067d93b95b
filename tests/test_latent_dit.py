"""A DiT on an autoencoder's latents (Peebles & Xie 2023 train DiT in the latent space of a frozen VAE, Sec. 3;
docs/models.md, docs/latent.md): diffkit train derives its in_channels / img_size from the latents as for a
latent U-Net, diffkit sample decodes its samples (class-conditional, with guidance), and what it cannot do is
refused in one line before any output. Tiny f=2 autoencoder (random weights) on the embedded digits."""
import pytest
from PIL import Image

from diffkit.cli import main
from diffkit.models.dit import DiT
from test_cli_errors import one_line_error
from test_latent_text import tiny_autoencoder_file

RUN = ["--no-progress", "--device", "cpu", "--dataset", "digits", "--steps", "2", "--batch-size", "8"]
DIT = ["--set=network=dit", "--set=img_size=16", "--set=num_layers=1", "--set=num_heads=2",
       "--set=attention_head_dim=4", "--set=T=20", "--set=sample_steps=2"]


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory):
    """A tiny f=2 KL autoencoder with 2 latent channels: 16x16 digits -> (2, 8, 8) latents."""
    return tiny_autoencoder_file(tmp_path_factory.mktemp("ae"))


def test_a_class_conditional_latent_dit_trains_and_samples_decoded_images(autoencoder_file, tmp_path, capsys):
    from diffkit.loading import load_denoiser
    run = tmp_path / "run"
    assert main(["train", *RUN, *DIT, "--no-sample", "--set=conditional=true", f"--set=autoencoder={autoencoder_file}",
                 "--out", str(run)]) == 0, capsys.readouterr().err
    assert "DiT on digits (1797 images, (2, 8, 8))" in capsys.readouterr().out
    d = load_denoiser(run / "checkpoints")
    # the checkpoint's description is the latents' shape (the config's img_size=16 and the digits' 1 channel are
    # the images'), as a latent U-Net's
    assert {k: d.meta["unet"][k] for k in ("network", "in_channels", "img_size", "patch_size", "num_classes")} == {
        "network": "dit", "in_channels": 2, "img_size": 8, "patch_size": 2, "num_classes": 10}
    assert isinstance(d.model, DiT) and d.model.config.in_channels == 2 and d.decoder is not None
    out = tmp_path / "s.png"
    code = main(["sample", "--checkpoint", str(run / "checkpoints"), "--steps", "2", "--num", "2", "--guidance-scale",
                 "2", "--class", "3", "7", "--out", str(out), "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "classes [3, 7]" in captured.out, captured.out
    # decoded: a 1-row grid of two 16x16 grey images (torchvision's make_grid, padding 2), not of 8x8 latents
    image = Image.open(out)
    assert sorted(image.size) == [16 + 2 * 2, 2 * 16 + 3 * 2] and image.mode == "L"


@pytest.mark.parametrize("patch", [16, 3])
def test_a_patch_size_not_dividing_the_latent_size_is_one_line_before_any_output(patch, autoencoder_file, tmp_path,
                                                                                 capsys):
    """patch_size=16 divides img_size=16 (the images) but not the 8x8 latents the DiT is cut from; 3 divides
    neither, and the message names the latents' size, not the images'."""
    out = tmp_path / "run"
    line = one_line_error(capsys, "train", *RUN, *DIT, f"--set=patch_size={patch}",
                          f"--set=autoencoder={autoencoder_file}", "--out", str(out))
    assert f"patch_size={patch} must divide the latent size 8" in line and "ae.safetensors" in line, line
    assert not out.exists()


def test_text_conditioning_with_a_latent_dit_is_still_refused(autoencoder_file, tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_error(capsys, "train", *RUN, *DIT, "--set=text_conditioning=true",
                          f"--set=autoencoder={autoencoder_file}", "--out", str(out))
    assert "text_conditioning=True is not available with network='dit'" in line, line
    assert "no cross-attention" in line, line
    assert not out.exists()
