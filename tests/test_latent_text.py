"""Text conditioning and latent diffusion (issue 9): tokenizer, captions, text encoder, the
latent text-to-image training run, ``diffkit sample --prompt`` and classifier-free guidance with
the empty prompt as the null condition. Tiny models on the embedded digits; seconds on the CPU."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit import DiffkitError
from diffkit import checkpoint as ckpt
from diffkit.autoencoder_training import save_autoencoder
from diffkit.cli import main
from diffkit.commands.sample import sample_to_files
from diffkit.config import TrainConfig
from diffkit.data import FASHION_MNIST_NAMES, InMemoryImageDataset, load_dataset
from diffkit.denoiser import Denoiser
from diffkit.guidance import ClassifierFreeGuidance
from diffkit.loading import load_denoiser
from diffkit.models.autoencoder import Autoencoder, AutoencoderConfig, estimate_scale_factor
from diffkit.models.unet import UNet, UNetConfig
from diffkit.noise import generators_from_seed, randn
from diffkit.samplers.registry import REGISTRY
from diffkit.sampling import sample
from diffkit.text import (CaptionSet, TextConditionedUNet, TextEncoder, TextEncoderConfig, WordTokenizer,
                          build_text_model, split_words)
from diffkit.training import Trainer

TINY = {"dataset": "digits", "img_size": 16, "channel": 16, "channel_mult": [1, 2], "attn": [1],
        "num_res_blocks": 1, "dropout": 0.0, "batch_size": 8, "lr": 1e-3, "max_steps": 3, "ema_decay": 0.9,
        "device": "cpu", "num_heads": 1, "text_conditioning": True, "context_dim": 16, "text_width": 16,
        "text_layers": 1, "text_heads": 2, "log_every": 1}


# ---------------------------------------------------------------------------- fixtures
def small_digits(n=96):
    """The first ``n`` embedded digits (16x16), so that encoding the latents takes no time."""
    full = load_dataset("digits")
    return InMemoryImageDataset(full.images[:n].clone(), full.labels[:n].clone(), 10, full.class_names)


def tiny_autoencoder_file(folder):
    """A tiny f=2 KL autoencoder (random weights, 2 latent channels: 16x16 digits -> (2, 8, 8)) with its
    data-estimated scale factor, saved in ``folder``."""
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(in_channels=1, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                                       latent_channels=2, attn_middle=False))
    images = load_dataset("digits").images[:200].float() / 127.5 - 1
    path = folder / "ae.safetensors"
    save_autoencoder(path, ae, estimate_scale_factor(ae, images))
    return path


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory):
    return tiny_autoencoder_file(tmp_path_factory.mktemp("ae"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, autoencoder_file):
    """A latent text-conditional run of 3 steps: (trainer, checkpoint path)."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig.from_dict({**TINY, "autoencoder": str(autoencoder_file), "save_weight_dir": str(out / "ckpt"),
                                 "sampled_dir": str(out / "samples")})
    trainer = Trainer(cfg, small_digits(), progress=False)
    result = trainer.run()
    return trainer, result.checkpoint


def _randomise_zero_layers(module, seed=0):
    """Give the zero-initialised output layers (still near 0 after 3 steps) random weights, so the
    barely trained net's eps is not nearly 0 and its prompts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().max() < 0.01:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_padding_and_special_tokens():
    captions = CaptionSet.for_dataset("fashion-mnist").all_captions()
    tok = WordTokenizer.from_texts(captions, max_tokens=16)
    ids = tok.encode(captions)
    assert ids.shape == (len(captions), 16) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.bos_id).all()
    for text, row in zip(captions, ids.tolist()):
        n = len(split_words(text))
        assert row[n + 1] == tok.eos_id and all(i == tok.pad_id for i in row[n + 2:])
        assert tok.unk_id not in row
    assert tok.decode(ids) == [" ".join(split_words(c)).replace(" ,", ",") for c in captions]
    assert tok.decode(tok.encode("An ankle boot, black and white")) == ["an ankle boot, black and white"]
    empty = tok.encode("")[0].tolist()
    assert empty[:2] == [tok.bos_id, tok.eos_id] and set(empty[2:]) == {tok.pad_id}
    # deterministic: the vocabulary does not depend on the order of the captions; JSON round trip
    again = WordTokenizer.from_texts(list(reversed(captions)), max_tokens=16)
    assert again.tokens == tok.tokens
    restored = WordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert restored.tokens == tok.tokens and torch.equal(restored.encode(captions), ids)


def test_tokenizer_unknown_words_and_too_long_prompts():
    tok = WordTokenizer.from_texts(["a photo of a sneaker"], max_tokens=6)
    assert tok.unknown_words("a photo of a zebra") == ["zebra"]
    assert tok.encode("a zebra")[0].tolist() == [tok.bos_id, tok.index["a"], tok.unk_id, tok.eos_id, 0, 0]
    with pytest.raises(DiffkitError, match="at most 4"):
        tok.encode("a photo of a red sneaker")


# ---------------------------------------------------------------------------- captions
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "digits"])
def test_captions_cover_every_class_and_vary(name):
    caps = CaptionSet.for_dataset(name)
    assert caps.num_classes == 10
    for k in range(10):
        row = caps.captions(k)
        assert len(set(row)) >= 6, row  # varied templates and phrases
        others = {c for j in range(10) if j != k for c in caps.captions(j)}
        assert not others & set(row)  # a caption names one class only
    # draws hit every caption of a class: u -> floor(u * count)
    u = (torch.arange(len(caps.captions(7))) + 0.5) / len(caps.captions(7))
    assert sorted(caps.draw(torch.full((len(u),), 7), u)) == sorted(caps.captions(7))


def test_caption_examples_of_the_issue():
    fashion = CaptionSet.for_dataset("fashion-mnist").all_captions()
    for text in ("a photo of a sneaker", "an ankle boot, black and white", "a picture of a trouser"):
        assert text in fashion
    digits = CaptionSet.for_dataset("mnist")
    assert "the digit seven" in digits.captions(7) and "a handwritten 7" in digits.captions(7)
    assert CaptionSet.for_dataset("fashion-mnist").prompt(7) == "a photo of a sneaker"
    assert len(FASHION_MNIST_NAMES) == CaptionSet.for_dataset("fashion-mnist").num_classes
    cifar = CaptionSet.for_dataset("cifar10", ["airplane", "automobile"])
    assert "a photo of an airplane" in cifar.captions(0)


# ---------------------------------------------------------------------------- text encoder
def test_text_encoder_shape_and_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    tok = WordTokenizer.from_texts(CaptionSet.for_dataset("mnist").all_captions(), max_tokens=12)
    enc = TextEncoder(TextEncoderConfig(tok.vocab_size, width=32, layers=2, heads=4, max_tokens=12,
                                        context_dim=24)).eval()
    prompts = ["the digit seven", "a picture of a handwritten 7", ""]
    ids = tok.encode(prompts)
    out = enc(ids)
    assert out.shape == (3, 12, 24) and torch.isfinite(out).all()
    for i, text in enumerate(prompts):
        n = len(split_words(text)) + 2  # <bos> words <eos>
        alone = enc(ids[i:i + 1, :n])  # the same prompt with no padding at all
        torch.testing.assert_close(out[i:i + 1, :n], alone, atol=1e-5, rtol=1e-5)
    # and the prompt matters: two prompts give different sequences
    assert not torch.allclose(out[0], out[1])


def test_caption_tokens_drop_to_the_empty_prompt():
    caps = CaptionSet.for_dataset("digits")
    unet = UNet(UNetConfig(channel=16, channel_mult=[1, 2], attn=[1], num_res_blocks=1, img_size=8,
                           in_channels=1, context_dim=16))
    net = build_text_model(unet, caps, width=16, layers=1, heads=2, max_tokens=12)
    assert isinstance(net, TextConditionedUNet) and net.text.config.context_dim == 16
    labels = torch.tensor([3, 3, 7, 0])
    u = torch.tensor([0.0, 0.999, 0.5, 0.2])
    drop = torch.tensor([False, False, False, True])
    ids = net.caption_tokens(labels, u, drop)
    text = net.tokenizer.decode(ids)
    assert text[0] == caps.captions(3)[0] and text[1] == caps.captions(3)[-1]
    assert text[2] in caps.captions(7) and text[3] == ""
    with pytest.raises(DiffkitError, match="max_prompt_tokens=4 is too small"):
        build_text_model(unet, caps, width=16, layers=1, heads=2, max_tokens=4)


# ---------------------------------------------------------------------------- training and sampling
def test_latent_text_training_writes_a_self_contained_checkpoint(trained):
    trainer, path = trained
    tensors, meta = ckpt.load_checkpoint(path)
    assert meta["unet"]["in_channels"] == 2 and meta["unet"]["img_size"] == 8  # latents of f=2
    assert meta["unet"]["context_dim"] == 16
    assert meta["latent"]["scale_factor"] == pytest.approx(trainer.latent.scale_factor)
    assert any(k.startswith("autoencoder.") for k in tensors)
    assert any(k.startswith("model.text.") for k in tensors) and any(k.startswith("ema.text.") for k in tensors)
    assert meta["text"]["tokenizer"]["words"] == trainer.model.tokenizer.to_dict()["words"]
    # the latents were encoded once, as z = s * E(x) of the autoencoder
    x = load_dataset("digits").images[:4].float() / 127.5 - 1
    z = trainer.latent.scale_factor * trainer.latent.model.encode_latents(x)
    torch.testing.assert_close(trainer.dataset.latents[:4], z)
    # the text encoder was trained jointly: its weights moved away from their initial values
    fresh = Trainer(trainer.cfg, small_digits(), progress=False)
    assert not torch.equal(fresh.model.text.out.weight, trainer.model.text.out.weight)


def test_sample_cli_with_prompts_writes_a_grid_of_the_right_size(trained, tmp_path, capsys):
    _, path = trained
    out = tmp_path / "grid.png"
    code = main(["sample", "--checkpoint", str(path), "--prompt", "the digit seven", "--prompt",
                 "a handwritten 3", "--prompt", "a photo of a zebra", "--guidance-scale", "5", "--sampler", "pndm",
                 "--steps", "4", "--num", "6", "--out", str(out), "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "'zebra'" in captured.err and "<unk>" in captured.err  # the unknown word is reported
    warned = [line for line in captured.err.splitlines() if "zebra" in line]  # once, as a DiffkitWarning
    assert warned == ["diffkit sample: warning: prompt 'a photo of a zebra': word(s) 'zebra' are not in the model's "
                      "vocabulary and are encoded as <unk>"], captured.err
    image = np.asarray(Image.open(out))
    assert image.shape == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 3 prompts x 2, decoded to 16x16 pixels


def test_text_guidance_of_a_model_trained_without_caption_dropout_is_refused(trained, tmp_path, capsys):
    """p_uncond = 0 never trained the empty prompt, the null condition of --guidance-scale: refused in one
    line before the --out folder is made."""
    from diffkit.checkpoint import load_checkpoint, save_checkpoint
    tensors, meta = load_checkpoint(trained[1])
    assert meta["config"]["text_conditioning"] and meta["config"]["p_uncond"] > 0
    meta["config"]["p_uncond"] = 0.0
    never = save_checkpoint(tmp_path / "never.safetensors", tensors, meta)
    code = main(["sample", "--checkpoint", str(never), "--prompt", "the digit seven", "--guidance-scale", "5",
                 "--steps", "1", "--num", "1", "--out", str(tmp_path / "new" / "g.png"), "--no-progress",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "diffkit sample: error: this checkpoint was trained with p_uncond=0, so its empty prompt is untrained; "
        "classifier-free guidance needs a model trained with label dropout (p_uncond > 0)"], err
    assert not (tmp_path / "new").exists()


def test_every_sampler_works_with_text_guidance_on_latents(trained):
    _, path = trained
    d = load_denoiser(path)
    context = d.prompt_encoder(["the digit seven"] * 2)
    guided = ClassifierFreeGuidance(d, 3.0, null_context=d.prompt_encoder([""]))
    for name in REGISTRY:
        if REGISTRY[name].adaptive:  # ode takes no steps; through guidance: tests/test_samplers_ode.py
            continue
        z = sample(guided, (2, 2, 8, 8), name, 4, seed=0, cond={"context": context}, progress=False)
        images = d.decoder(z)
        assert images.shape == (2, 1, 16, 16) and torch.isfinite(images).all(), name


def test_cfg_with_the_empty_prompt_equals_the_formula_from_two_calls(trained):
    _, path = trained
    d = load_denoiser(path)
    _randomise_zero_layers(d.model)
    prompts = ["the digit seven", "a handwritten 3", "an image of the number one"]
    context, null = d.prompt_encoder(prompts), d.prompt_encoder([""])
    # in float64, so that the batched call (both passes at once) and the two separate calls differ
    # only by rounding far below the tolerance (in float32, convolution kernels chosen by batch size
    # differ by ~3e-6, which (1 + 2w) amplifies past 1e-5 at w = 5 on some CPUs)
    d.model.double()
    context, null = context.double(), null.double()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([900.0, 500.0, 37.5], dtype=torch.float64)
    eps_c = d(x, t, context=context).eps
    eps_u = d(x, t, context=null.expand_as(context)).eps
    assert not torch.allclose(eps_c, eps_u, atol=1e-4)  # the prompt changes the prediction
    for w in (0.0, 1.5, 5.0):
        guided = ClassifierFreeGuidance(d, w, null_context=null)
        nfe = d.nfe
        pred = guided(x, t, context=context)
        torch.testing.assert_close(pred.eps, (1 + w) * eps_c - w * eps_u, atol=1e-5, rtol=1e-5)  # seed 002 eq.
        assert d.nfe == nfe + 1  # one batched call for both passes (w = 0: the conditional pass alone)
    s = 4.0  # diffusers: eps_u + s (eps_c - eps_u)
    pred = ClassifierFreeGuidance(d, s, "diffusers", null_context=null)(x, t, context=context)
    torch.testing.assert_close(pred.eps, eps_u + s * (eps_c - eps_u), atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip_gives_identical_samples(trained, tmp_path):
    trainer, path = trained
    # in memory: the trainer's EMA weights, its autoencoder, prompts encoded by its text encoder
    model = Trainer(trainer.cfg, small_digits(), progress=False).model
    model.load_state_dict(trainer.model.state_dict())
    trainer.ema.copy_to(model)
    model.eval()
    base = Denoiser(model, trainer.schedule)
    prompts = ["the digit seven", "the digit seven", "a handwritten 3", "a handwritten 3"]
    guided = ClassifierFreeGuidance(base, 2.0, null_context=model.encode_prompts([""]))
    noise = randn((4, 2, 8, 8), generators_from_seed(5, 4))
    z = sample(guided, noise, "ddim", 5, generator=generators_from_seed(5 + 10_000_019, 4),
               cond={"context": model.encode_prompts(prompts)}, progress=False)
    expected = trainer.latent.decode(z).clamp(-1, 1)
    # from the checkpoint file, through the sample command's library function
    from diffkit.commands.sample import GuidanceRequest
    images = sample_to_files(path, sampler="ddim", steps=5, num=4, out=tmp_path / "a.png", seed=5, progress=False,
                             guidance=GuidanceRequest(guidance_scale=2.0,
                                                      prompts=["the digit seven", "a handwritten 3"]))
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    again = sample_to_files(path, sampler="ddim", steps=5, num=4, out=tmp_path / "b.png", seed=5, progress=False,
                            guidance=GuidanceRequest(guidance_scale=2.0,
                                                     prompts=["the digit seven", "a handwritten 3"]))
    assert torch.equal(images, again)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_resume_continues_exactly(trained, tmp_path):
    """Stopped after step 2 of 3 and resumed: the weights of a straight run of 3 steps, bitwise (a
    straight 5 against 2 + 3 proved the same at 10 steps of training instead of 6)."""
    trainer, path = trained
    cfg = TrainConfig.from_dict({**trainer.cfg.to_dict(), "max_steps": 3, "save_weight_dir": str(tmp_path / "a")})
    straight = Trainer(cfg, small_digits(), progress=False)
    straight.run()
    first = Trainer(TrainConfig.from_dict({**cfg.to_dict(), "save_weight_dir": str(tmp_path / "b")}), small_digits(),
                    progress=False)
    first.run(stop_at=2)
    resumed = Trainer(TrainConfig.from_dict({**cfg.to_dict(), "save_weight_dir": str(tmp_path / "b"),
                                             "training_load_weight": str(tmp_path / "b" / "latest.safetensors")}),
                      small_digits(), progress=False)
    resumed.run()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # resuming on the latents of another autoencoder file is refused
    torch.manual_seed(1)
    other = Autoencoder(AutoencoderConfig(in_channels=1, channel=8, channel_mult=[1, 2], num_res_blocks=1,
                                          latent_channels=2, attn_middle=False))
    save_autoencoder(tmp_path / "other.safetensors", other, 1.0)
    wrong = Trainer(TrainConfig.from_dict({**cfg.to_dict(), "autoencoder": str(tmp_path / "other.safetensors"),
                                           "save_weight_dir": str(tmp_path / "c")}), small_digits(), progress=False)
    with pytest.raises(DiffkitError, match="another autoencoder file"):
        wrong.load(tmp_path / "b" / "latest.safetensors")


# ---------------------------------------------------------------------------- CLIP (optional)
def _tiny_clip_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=12)
    tok.save_pretrained(str(tmp_path))
    config = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=12,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(str(tmp_path))
    return tmp_path


def test_frozen_clip_text_encoder_from_a_local_directory(tmp_path):
    from diffkit.text import CLIPPromptEncoder
    (tmp_path / "clip").mkdir()
    directory = _tiny_clip_dir(tmp_path / "clip")
    enc = CLIPPromptEncoder(directory)
    out = enc(["a photo of a bag", ""])
    assert out.shape == (2, 12, 16) and enc.context_dim == 16
    # the same as transformers' own model on the same ids
    import transformers
    ids = enc.tokenizer(["a photo of a bag", ""], padding="max_length", max_length=12, truncation=True,
                        return_tensors="pt").input_ids
    ref = transformers.CLIPTextModel.from_pretrained(str(directory)).eval()(ids).last_hidden_state
    torch.testing.assert_close(out, ref)
    assert not any(p.requires_grad for p in enc.model.parameters())
    with pytest.raises(DiffkitError, match="does not exist"):
        CLIPPromptEncoder(tmp_path / "missing")


def damage_weights(folder, value=float("nan")) -> str:
    """Write ``value`` into the first ``q_proj.weight`` of ``folder``'s model.safetensors; returns that key."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    key = next(k for k in sorted(tensors) if "q_proj.weight" in k)
    tensors[key][0, 0] = value
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return key


def test_clip_text_encoder_of_nan_weights_is_one_line(tmp_path):
    from diffkit.text import CLIPPromptEncoder
    (tmp_path / "clip").mkdir()
    directory = _tiny_clip_dir(tmp_path / "clip")
    key = damage_weights(directory)
    with pytest.raises(DiffkitError) as err:
        CLIPPromptEncoder(directory, progress=False)
    assert str(err.value) == f"CLIP text encoder {directory / 'model.safetensors'}: tensor {key!r} holds NaN or " \
                             f"infinite values; the file is damaged (give a file of finite weights)"


def test_clip_text_encoder_without_progress_shows_no_loading_bar(tmp_path, capfd):
    """transformers' "Loading weights" bar showed even when progress was off."""
    import transformers

    from diffkit.text import CLIPPromptEncoder
    (tmp_path / "clip").mkdir()
    directory = _tiny_clip_dir(tmp_path / "clip")
    capfd.readouterr()
    CLIPPromptEncoder(directory, progress=False)
    assert "it/s" not in capfd.readouterr().err
    assert transformers.utils.logging.is_progress_bar_enabled()  # the library's own setting is back
    CLIPPromptEncoder(directory)
    assert "Loading weights" in capfd.readouterr().err  # with progress on, as before


# ---------------------------------------------------------------------------- bad input
def test_config_refuses_bad_combinations_with_one_line():
    with pytest.raises(DiffkitError, match="exclude each other") as err:
        TrainConfig.from_dict({**TINY, "conditional": True})
    assert "\n" not in str(err.value)
    with pytest.raises(DiffkitError, match="text_heads=3 must divide text_width=16"):
        TrainConfig.from_dict({**TINY, "text_heads": 3})
    with pytest.raises(DiffkitError, match="hflip=True cannot be used with an autoencoder"):
        TrainConfig.from_dict({**TINY, "autoencoder": "ae.safetensors", "hflip": True})
    with pytest.raises(DiffkitError, match="max_prompt_tokens=2 is out of range"):
        TrainConfig.from_dict({**TINY, "max_prompt_tokens": 2})


def test_trainer_refuses_a_missing_autoencoder_and_a_bad_latent_size(tmp_path, autoencoder_file):
    with pytest.raises(DiffkitError, match="is not a file"):
        Trainer(TrainConfig.from_dict({**TINY, "autoencoder": str(tmp_path / "nope.safetensors")}), progress=False)
    # 24x24 images pass the config's check for channel_mult [1, 2, 2, 2] (24 % 8 == 0), the 12x12 latents do not
    with pytest.raises(DiffkitError, match="latents are 12x12, not divisible by 8"):
        Trainer(TrainConfig.from_dict({**TINY, "autoencoder": str(autoencoder_file), "img_size": 24,
                                       "channel_mult": [1, 2, 2, 2], "attn": []}), progress=False)


def test_sample_cli_bad_input_one_liners(trained, tmp_path, capsys):
    _, path = trained
    code = main(["sample", "--checkpoint", str(path), "--prompt", "a", "--class", "3", "--no-progress"])
    assert code == 2 and "exclude each other" in capsys.readouterr().err
    code = main(["sample", "--checkpoint", str(path), "--class", "3", "--out", str(tmp_path / "x.png"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "use --prompt" in err and len(err.strip().splitlines()) == 1
    code = main(["sample", "--checkpoint", str(path), "--prompt", "the digit seven " * 5, "--out",
                 str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "allowed: at most" in err and len(err.strip().splitlines()) == 1
    code = main(["sample", "--checkpoint", str(path), "--prompt", "zzz " * 500, "--out", str(tmp_path / "x.png"),
                 "--no-progress"])  # a long prompt is quoted shortened; its length is the one mistake named
    err = capsys.readouterr().err
    assert code == 2 and len(err) < 400 and "allowed: at most" in err and len(err.strip().splitlines()) == 1, err
    code = main(["sample", "--checkpoint", str(path), "--prompt", "zzz seven", "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "w.png"), "--no-progress"])  # unknown words: a warning, then the grid
    err = capsys.readouterr().err
    assert code == 0 and "word(s) 'zzz' are" in err, err
    code = main(["sample", "--checkpoint", str(path), "--prompt", "a", "--prompt", "b", "--prompt", "c",
                 "--num", "2", "--out", str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--num 2 in rows of 1 gives images to 2 of the 3 prompts of --prompt; give --num 3" in err, err
    code = main(["sample", "--checkpoint", str(path), "--prompt", "a", "--prompt", "b", "--prompt", "c",
                 "--num", "4", "--out", str(tmp_path / "x.png"), "--no-progress"])  # rows of 2: c got none
    err = capsys.readouterr().err
    assert code == 2 and "gives images to 2 of the 3 prompts of --prompt; give --num 6" in err, err
    code = main(["sample", "--checkpoint", str(path), "--noise-out", str(tmp_path / "n.png"), "--out",
                 str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "drop --noise-out" in err and not (tmp_path / "x.png").exists(), err
    code = main(["eval", "--checkpoint", str(path), "--metrics", "nll", "--num", "4", "--out",
                 str(tmp_path / "e.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is text-conditional; evaluation samples unconditional" in err, err
    # --prompt on a model without text conditioning
    trainer = Trainer(TrainConfig.from_dict({**TINY, "text_conditioning": False, "img_size": 16, "max_steps": 1,
                                             "save_weight_dir": str(tmp_path / "pix")}), small_digits(), progress=False)
    assert trainer.model.config.context_dim is None
    trainer.run()
    code = main(["sample", "--checkpoint", str(tmp_path / "pix"), "--prompt", "a photo of a sneaker", "--out",
                 str(tmp_path / "x.png"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--prompt needs a text-conditional checkpoint" in err


def test_a_text_conditioned_network_takes_the_bf16_layout_inside_its_wrapper(tmp_path):
    """use_memory_format on the wrapper reaches the U-Net inside it: a bf16 trainer told to compute
    contiguous lays its text-conditioned U-Net out so, and the loaded denoiser gets the layout
    preferred for its precision (``preferred_memory_format``)."""
    from diffkit.models.layers import preferred_memory_format
    cfg = TrainConfig.from_dict({**TINY, "max_steps": 1, "mixed_precision": "bf16", "memory_format": "contiguous",
                                 "save_weight_dir": str(tmp_path / "ckpt"), "sampled_dir": str(tmp_path / "s")})
    trainer = Trainer(cfg, small_digits(), progress=False)
    assert isinstance(trainer.model, TextConditionedUNet)
    result = trainer.run()
    unets = [m for m in trainer.model.modules() if isinstance(m, UNet)]
    assert unets and all(m.memory_format is torch.contiguous_format for m in unets)
    assert all(p.is_contiguous() for p in trainer.model.parameters())
    loaded = load_denoiser(result.checkpoint, mixed_precision="bf16").model
    bf16_layout = preferred_memory_format("cpu", "bf16")
    assert all(m.memory_format is bf16_layout for m in loaded.modules() if isinstance(m, UNet))
    assert all(m.memory_format is torch.channels_last for m in load_denoiser(result.checkpoint).model.modules()
               if isinstance(m, UNet))


def test_eval_scores_a_latent_model_on_its_decoded_images(autoencoder_file, tmp_path):
    from diffkit.evaluation import evaluate, generate_samples
    from diffkit.metrics import EvaluatorConfig, EvaluatorNet, save_evaluator
    cfg = TrainConfig.from_dict({**TINY, "text_conditioning": False, "autoencoder": str(autoencoder_file),
                                 "max_steps": 1, "save_weight_dir": str(tmp_path / "ckpt")})
    path = Trainer(cfg, small_digits(), progress=False).run().checkpoint
    denoiser = load_denoiser(path)
    assert denoiser.meta["unet"]["img_size"] == 8  # f = 2 latents of 16x16 digits
    images = generate_samples(denoiser, 3, sampler="ddim", steps=2)
    assert images.shape == (3, 1, 16, 16)  # decoded, as the sample command writes them
    torch.manual_seed(0)
    save_evaluator(EvaluatorNet(EvaluatorConfig(in_channels=1, image_size=16, channels=(4,), feature_dim=8)),
                   tmp_path / "ev.safetensors")
    result = evaluate("confidence", checkpoint=path, evaluator=tmp_path / "ev.safetensors", num=4, steps=2)
    assert 0 < result["metrics"]["confidence"]["value"] <= 1
    with pytest.raises(DiffkitError, match="is a latent model"):
        evaluate("nll", checkpoint=path, num=4)


def test_a_latent_model_is_not_exported_as_a_pixel_pipeline(tmp_path, autoencoder_file, capsys):
    """A DDPMPipeline of a latent U-Net would sample its latents as images (no autoencoder in it)."""
    pytest.importorskip("diffusers")
    from diffkit.cli import main
    pixelless = {k: v for k, v in TINY.items() if not k.startswith(("text", "context"))}
    cfg = TrainConfig.from_dict({**pixelless, "max_steps": 1, "autoencoder": str(autoencoder_file),
                                 "save_weight_dir": str(tmp_path / "ckpt"), "sampled_dir": str(tmp_path / "s")})
    checkpoint = Trainer(cfg, small_digits(), progress=False).run().checkpoint
    code = main(["convert", "--checkpoint", str(checkpoint), "--to-diffusers", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code == 2 and "is a latent diffusion model" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "hf").exists()


def test_train_then_sample_a_latent_model_on_the_command_line(autoencoder_file, tmp_path, capsys):
    """README's `diffkit train ... --set autoencoder=ae.safetensors` trains and then samples its
    grid (it ended with "--noise-out: a latent checkpoint ...", a flag the user never gave)."""
    from diffkit.cli import main as cli_main

    flags = [f"--set={k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in TINY.items()
             if k not in ("dataset", "max_steps", "batch_size")]
    code = cli_main(["train", "--dataset", "digits", "--steps", "2", "--batch-size", "8",
                     "--out", str(tmp_path / "ldm"),
                     "--no-progress", f"--set=autoencoder={autoencoder_file}", "--set=sample_steps=2", *flags])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "ldm" / "samples" / "SampledNoGuidanceImgs.png").is_file()
    assert not (tmp_path / "ldm" / "samples" / "NoisyNoGuidanceImgs.png").exists()


def test_a_malformed_context_or_caption_label_is_one_line(trained):
    trainer, _ = trained
    unet = trainer.model.unet
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([500.0, 500.0])
    good = torch.randn(2, 5, unet.config.context_dim)
    with torch.no_grad():
        unet(x, t, context=good)
        for context in (good[:1], good[..., :8], good[0]):
            with pytest.raises(DiffkitError, match=r"context of shape .* is not allowed; give \(batch, tokens, "):
                unet(x, t, context=context)
    with pytest.raises(DiffkitError, match="label -1 has no captions"):
        trainer.model.caption_tokens(torch.tensor([-1, 3]), torch.rand(2))


def test_text_guidance_takes_the_apg_options(trained):
    """``diffkit sample --prompt ... --guidance-scale W --apg-*`` on a text-conditional checkpoint: the empty-prompt
    ClassifierFreeGuidance carries the APG settings (their formula: tests/test_apg.py)."""
    from diffkit.commands.sample import GuidanceRequest, prompt_conditioning
    _, path = trained
    request = GuidanceRequest(guidance_scale=3.0, prompts=["the digit seven"], apg_eta=0.0, apg_norm_threshold=2.0,
                              apg_momentum=-0.5)
    guided = prompt_conditioning(load_denoiser(path), request, 2, 2)[0]
    assert isinstance(guided, ClassifierFreeGuidance) and guided.null_context is not None
    assert (guided.w, guided.apg_eta, guided.apg_norm_threshold, guided.apg_momentum) == (3.0, 0.0, 2.0, -0.5)


def test_fine_tuning_a_latent_text_model_starts_from_its_weights(trained, tmp_path):
    """diffkit train --init-from a latent source: its U-Net's in_channels are the latents' (2 here), the
    config's in_channels the images' (None: the data set's); the run used to be refused with
    in_channels=2 (allowed 1, 3). The new run starts at the source's EMA weights, text encoder included."""
    from diffkit.commands.train import fine_tune_fields
    from diffkit.loading import load_model
    _, path = trained
    fields = fine_tune_fields(path, {"dataset": "digits", "batch_size": 8, "max_steps": 1, "device": "cpu",
                                     "lora_rank": 2, "save_weight_dir": str(tmp_path / "ckpt")})
    assert fields["in_channels"] is None and fields["autoencoder"] == trained[0].cfg.autoencoder
    trainer = Trainer(TrainConfig.from_dict(fields), small_digits(), progress=False)
    expected = load_model(path)[0].state_dict()
    state = {k: v for k, v in trainer.model.state_dict().items() if ".lora_" not in k}
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
