"""``diffkit upscale --lora FILE[:SCALE]`` on a super-resolution model (docs/super_resolution.md): the
adapter of a LoRA run, merged at scale 1 into its base upscaler, upscales byte for byte as the
self-contained LoRA checkpoint does; scale 0 is the base. Tiny 4 -> 8 upscaler, one step each."""
import pytest
import torch

from diffkit.cli import main
from diffkit.images import save_images
from diffkit.super_res import downsample

# lr 0.05 without warm-up or EMA: the base's zero-initialised output layer, then the LoRA B, leave 0 in one step
TINY = ["--set=img_size=8", "--set=channel=16", "--set=channel_mult=[1,2]", "--set=attn=[1]", "--set=num_res_blocks=1",
        "--set=batch_size=8", "--set=num_heads=1", "--set=dropout=0", "--set=lr=0.05", "--set=warmup_fraction=0",
        "--set=ema_decay=0", "--no-progress", "--no-sample", "--device", "cpu"]


@pytest.fixture(scope="module")
def lora_upscaler(tmp_path_factory):
    """A 1-step 4 -> 8 upscaler, a 1-step LoRA run (rank 2) from it, its adapter file, two 4x4 PNGs."""
    root = tmp_path_factory.mktemp("lora_upscale")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("diffkit.training.plot_loss_curve", lambda *args: None)  # matplotlib: most of a tiny run's time
        return _train(root)


def _train(root):
    assert main(["train", "--out", str(root / "base"), "--steps", "1", *TINY, "--set=super_res_from=4"]) == 0
    assert main(["train", "--init-from", str(root / "base" / "checkpoints"), "--out", str(root / "lora"), "--steps",
                 "1", *TINY, "--set=lora_rank=2", "--set=lora_targets=attention,resblock"]) == 0
    assert main(["convert", "--checkpoint", str(root / "lora" / "checkpoints"), "--lora-only", "--out",
                 str(root / "adapter.safetensors")]) == 0
    low = downsample(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, 4)
    save_images(low, root / "low", prefix="low")
    return root


def test_upscale_with_an_adapter_file_is_the_lora_checkpoint(lora_upscaler, tmp_path, capsys):
    root, adapter = lora_upscaler, lora_upscaler / "adapter.safetensors"

    def upscale(name, run, *lora):
        out = tmp_path / name
        code = main(["upscale", "--checkpoint", str(root / run / "checkpoints"), "--images", str(root / "low"),
                     "--out", str(out), "--steps", "2", "--seed", "3", "--no-progress", "--device", "cpu", *lora])
        assert code == 0, capsys.readouterr().err
        return [p.read_bytes() for p in sorted(out.glob("upscaled_*.png"))]
    file = upscale("file", "base", "--lora", f"{adapter}:1")
    assert len(file) == 2 and file == upscale("ckpt", "lora")
    assert upscale("zero", "base", "--lora", f"{adapter}:0") == upscale("base", "base") != file
