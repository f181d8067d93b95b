"""ChronoEdit folders (diffkit.interop.chronoedit): edit_image against diffusers' own ChronoEditPipeline on a tiny
random folder (a 1-layer UMT5 of width 32 on a few-word unigram tokenizer, a 2-layer ChronoEditTransformer3DModel
with image conditioning, a 1-layer CLIPVisionModel of width 16 on 32 px, a Wan 2.1 AutoencoderKLWan of z_dim 4 with
non-trivial latents mean / std, Wan's flow UniPC scheduler; nothing downloaded). ftfy is not installed: the pipeline's
prompt_clean gets it as the identity, as diffkit does."""
import re
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_images  # noqa: E402
from diffkit.interop.chronoedit import check_chronoedit_folder, check_frames, edit_image, load_chronoedit  # noqa: E402

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402

H, W = 32, 48  # latents 4 x 6: 2 x 3 patches
Z = 4  # the VAE's z_dim
PROMPT, NEGATIVE = "a photo of a Cat", "blurry dog"


@pytest.fixture(scope="module")
def tiny_chronoedit(tmp_path_factory):
    """(ChronoEditPipeline.from_pretrained of the saved folder, the folder, load_chronoedit of it), with ftfy's
    fix_text as the identity in the pipeline's module while the tests run."""
    from diffusers.pipelines.chronoedit import pipeline_chronoedit
    root = tmp_path_factory.mktemp("chronoedit")
    torch.manual_seed(0)
    umt5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.ChronoEditTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * Z + 4, out_channels=Z,
        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=32)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2, image_size=32,
        patch_size=8)).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i - 0.2 for i in range(Z)], latents_std=[1 + 0.2 * i for i in range(Z)])
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=5.0)
    pipe = diffusers.ChronoEditPipeline(tokenizer=tiny_t5_tokenizer(), text_encoder=umt5, image_encoder=clip,
                                        image_processor=processor, transformer=transformer, vae=vae,
                                        scheduler=scheduler)
    pipe.save_pretrained(root / "chronoedit")
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(pipeline_chronoedit, "ftfy"):
            patch.setattr(pipeline_chronoedit, "ftfy", types.SimpleNamespace(fix_text=lambda text: text),
                          raising=False)
        yield reloaded(root / "chronoedit", diffusers.ChronoEditPipeline, load_chronoedit)


def _image(seed=3, size=(W, H)):
    from PIL import Image
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def _latents(frames=2, seed=7):
    return torch.randn(1, Z, frames, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_chronoedit_matches_the_pipeline(tiny_chronoedit):
    """The plain edit (5 frames: 2 latent frames) with CFG s = 4 against a negative prompt, 3 UniPC steps, the image
    resized for the VAE (CLIP sees the original): the same latents and last frame as ChronoEditPipeline from the same
    noise (its final latents read by a step callback)."""
    pipe, _, model = tiny_chronoedit
    image, latents, final = _image(size=(W + 8, H + 8)), _latents(), {}  # resized to H x W (Lanczos) for the VAE

    def keep(pipeline, i, t, tensors):
        final["latents"] = tensors["latents"]
        return {}
    kw = {"negative_prompt": NEGATIVE, "guidance_scale": 4.0}
    with torch.no_grad():
        frames = pipe(image, PROMPT, height=H, width=W, num_inference_steps=3, latents=latents, output_type="pt",
                      callback_on_step_end=keep, **kw).frames
    ours = edit_image(model, image, PROMPT, steps=3, latents=latents, height=H, width=W, return_latents=True, **kw)
    error = relative_error(ours, final["latents"])
    print(f"latents: {error:.2e}")  # (measured 4.9e-7)
    assert error < 1e-5
    error = relative_error((model.decode_last(ours) / 2 + 0.5).clamp(0, 1), frames[:, -1])
    print(f"frame: {error:.2e}")  # (measured 8.1e-7)
    assert error < 1e-5


@pytest.mark.parametrize("reasoning, euler", [(1, False), (3, True)])
def test_chronoedit_temporal_reasoning_matches_the_pipeline(tiny_chronoedit, reasoning, euler):
    """Temporal reasoning over 9 frames (3 latent frames) for K of 3 steps, unguided: K = 1 trims the video to [first,
    last] after one step (diffkit's net sees those frames alone from there), K = 3 denoises the whole video (the
    pipeline decodes [first, last]); the latter on a FlowMatchEuler scheduler (shift 5: flow Euler, timesteps s T)."""
    import dataclasses

    from diffkit.schedule import NoiseSchedule
    pipe, _, model = tiny_chronoedit
    image, latents, scheduler = _image(), _latents(3), pipe.scheduler
    if euler:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
        config = {**pipe.scheduler.config, "_class_name": "FlowMatchEulerDiscreteScheduler"}
        model = dataclasses.replace(model, scheduler_config=config, _sigmas={},
                                    schedule=NoiseSchedule.flow(1000, 5.0))
    try:
        with torch.no_grad():
            theirs = pipe(image, PROMPT, height=H, width=W, num_inference_steps=3, latents=latents, num_frames=9,
                          enable_temporal_reasoning=True, num_temporal_reasoning_steps=reasoning, guidance_scale=1.0,
                          output_type="latent").frames
    finally:
        pipe.scheduler = scheduler
    ours = edit_image(model, image, PROMPT, steps=3, latents=latents, temporal_reasoning_steps=reasoning,
                      num_frames=9, guidance_scale=1.0, return_latents=True)
    assert theirs.shape[2] == (2 if reasoning < 3 else 3)
    error = relative_error(ours, theirs[:, :, [0, -1]])
    print(f"latents: {error:.2e}")  # (measured 1.9e-7 both)
    assert error < 1e-5


def _edit_argv(path, folder):
    return ["edit", "--checkpoint", str(path), "--images", str(folder), "--prompt", PROMPT, "--steps", "1", "--seed",
            "3", "--no-progress"]


def test_chronoedit_command_is_the_library(tiny_chronoedit, tmp_path):
    """``diffkit edit`` writes the library's last frame byte for byte (CFG 5 against "", noise from seed + i), and
    with ``--temporal-reasoning-steps 1`` of 2 steps over ``--temporal-reasoning-frames 9``."""
    _, path, model = tiny_chronoedit
    image = _image()
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "a.png")
    for steps, extra, options in [(1, [], {}), (2, ["--temporal-reasoning-steps", "1", "--temporal-reasoning-frames",
                                                     "9"], {"temporal_reasoning_steps": 1, "num_frames": 9})]:
        expected, out = tmp_path / f"expected{steps}", tmp_path / f"out{steps}"
        save_images(edit_image(model, image, PROMPT, steps=steps, seed=3, output_range="-1,1", **options), expected,
                    prefix="edit")
        argv = _edit_argv(path, tmp_path / "in")
        argv[argv.index("--steps") + 1] = str(steps)
        assert main(argv + extra + ["--out", str(out)]) == 0
        assert (out / "edit_00000.png").read_bytes() == (expected / "edit_00000.png").read_bytes()
    assert (tmp_path / "out1" / "edit_00000.png").read_bytes() != (tmp_path / "out2" / "edit_00000.png").read_bytes()


def test_chronoedit_refusals_are_one_line(tiny_chronoedit, tmp_path, capsys):
    """Before any weight is read: SDEdit's --strength, a size not of 16, diffkit sample on the folder,
    --temporal-reasoning-steps elsewhere, --temporal-reasoning-frames alone or not 4 k + 1, a WanTransformer3DModel
    folder, a transformer without image conditioning;
    the library's frame counts and steps."""
    _, path, model = tiny_chronoedit
    (tmp_path / "in").mkdir()
    _image().save(tmp_path / "in" / "a.png")
    _image(size=(40, 32)).save(tmp_path / "odd.png")
    other = tmp_path / "other"
    (other / "transformer").mkdir(parents=True)
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for argv, expected in [
            (_edit_argv(path, tmp_path / "in") + ["--strength", "0.5"], "--strength does not apply to a ChronoEdit "
                                                                        "folder"),
            (_edit_argv(path, tmp_path / "odd.png"), "height x width 32x40 is not allowed; give positive multiples"),
            (["sample", "--checkpoint", str(path), "--prompt", "hot", "--no-progress", "--out",
              str(tmp_path / "never" / "x.png")], "ChronoEditPipeline folder, which diffkit sample does not take"),
            (_edit_argv(other, tmp_path / "in") + ["--temporal-reasoning-steps", "2"],
             "--temporal-reasoning-steps applies to a ChronoEdit folder"),
            (_edit_argv(path, tmp_path / "in") + ["--temporal-reasoning-frames", "9"],
             "num_frames=9 is not allowed without temporal reasoning"),
            (_edit_argv(path, tmp_path / "in")
             + ["--temporal-reasoning-steps", "2", "--temporal-reasoning-frames", "8"],
             "num_frames=8 is not allowed; give 4 k + 1")]:
        capsys.readouterr()
        assert main(argv + ([] if "--out" in argv else ["--out", str(tmp_path / "never")])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "never").exists()
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: ChronoEditTransformer3DModel"),
            ("transformer/config.json", {"added_kv_proj_dim": None}, "added_kv_proj_dim=None; allowed: a positive"),
            ("transformer/config.json", {"in_channels": 2 * Z}, "in_channels=8; allowed: 12"),
            ("scheduler/scheduler_config.json", {"use_flow_sigmas": False}, "use_flow_sigmas=False")]:
        bad = changed_folder(path, tmp_path, part, change, parts=("model_index.json", "scheduler", "transformer",
                                                                  "text_encoder", "tokenizer", "vae", "image_encoder",
                                                                  "image_processor"))
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_chronoedit_folder(bad)
    for steps, frames, expected in [(None, 9, "num_frames=9 is not allowed without temporal reasoning"),
                                    (2, 8, "num_frames=8 is not allowed; give 4 k + 1"),
                                    (0, None, "temporal_reasoning_steps=0 is not allowed")]:
        with pytest.raises(DiffkitError, match=re.escape(expected)):
            check_frames(steps, frames)
    with pytest.raises(DiffkitError, match="a negative prompt with guidance_scale=1"):
        edit_image(model, _image(), PROMPT, guidance_scale=1.0, negative_prompt="x")


# A text-to-video LoRA (no add_k_proj / add_v_proj: diffusers' loader adds zero ones), ranks / alphas differ
CHRONOEDIT_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2",
                                                             "proj_out", "time_proj", "linear_1"],
                       rank_pattern={"to_q": 2}, alpha_pattern={"to_v": 3.0})  # to_k: see the docs
WAN_NAMES = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj",
             "cross_attn.v_img": "attn2.add_v_proj", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}


def _wan_file(model, out, musubi, seed, diff_b=False):
    """A Wan LoRA file on ``model``'s transformer in Wan's own names: musubi's (lora_unet_blocks_i_..., every module of
    every block with its alpha, as its converter needs) or ComfyUI's diffusion_model. (lora_down / lora_up, alphas on
    some block modules, plus head.head and time_projection.1; ``diff_b``: every module's random .diff_b too)."""
    from safetensors.torch import save_file
    layers, g, tensors = dict(model.transformer.named_modules()), torch.Generator().manual_seed(seed), {}
    names = {f"blocks.{i}.{wan}": f"blocks.{i}.{ours}" for i in range(2) for wan, ours in WAN_NAMES.items()}
    if not musubi:
        names.update({"head.head": "proj_out", "time_projection.1": "condition_embedder.time_proj"})
    for j, (wan, ours) in enumerate(names.items()):
        rank, layer = 2 + j % 3, layers[ours]
        key = "lora_unet_" + wan.replace(".", "_") if musubi else "diffusion_model." + wan
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.3
        tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=g) * 0.3
        if musubi or (wan.startswith("blocks") and j % 2):
            tensors[f"{key}.alpha"] = torch.tensor(float(rank) * (0.5 + j % 4))
        if diff_b:
            tensors[f"{key}.diff_b"] = torch.randn(layer.out_features, generator=g) * 0.3
    save_file(tensors, out)
    return out


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")  # the I2V expansion's add_k_proj / add_v_proj
def test_chronoedit_lora_is_load_lora_weights_and_fuse_lora(tiny_chronoedit, tmp_path):
    """A diffusers-format file (ChronoEditPipeline.save_lora_weights, rank / alpha patterns, attention, FFN, the
    condition embedders and proj_out; no add_k_proj / add_v_proj, which the loader's I2V expansion fills with zeros)
    at 0.6: the final latents of load_lora_weights + fuse_lora(lora_scale=0.6)'s pipeline, and ``diffkit edit --lora
    FILE:0.6`` writes the library's PNG. Wan's diffusion_model. file (lora_down / lora_up, alphas, k_img / v_img) and
    musubi's lora_unet_ file, through diffusers' own converters: load_lora_weights + fuse_lora's weights."""
    import copy

    from test_sd_lora import fused_transformer_lora
    from diffkit.interop.chronoedit_lora import read_chronoedit_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, path, model = tiny_chronoedit
    lora, fused = fused_transformer_lora(diffusers.ChronoEditPipeline, path, tmp_path, CHRONOEDIT_LORA, scale=0.6,
                                         loaded=pipe)
    ours = load_chronoedit(path, progress=False, lora=[(lora, 0.6)])
    image, latents, final = _image(), _latents(), {}
    with torch.no_grad():
        fused(image, PROMPT, height=H, width=W, num_inference_steps=2, latents=latents, output_type="latent",
              callback_on_step_end=lambda p, i, t, kw: final.update(kw) or {})
    mine = edit_image(ours, image, PROMPT, steps=2, latents=latents, return_latents=True)
    error, start = relative_error(mine, final["latents"]), model.transformer.state_dict()
    print(f"diffusers-format file latents: {error:.2e}")  # (measured 1.4e-6)
    assert error < 1e-5
    assert max(float((v - start[k]).abs().max()) for k, v in ours.transformer.state_dict().items()) > 1e-2
    (tmp_path / "in").mkdir()
    image.save(tmp_path / "in" / "a.png")
    save_images(edit_image(ours, image, PROMPT, steps=1, seed=3, output_range="-1,1"), tmp_path / "expected",
                prefix="edit")
    assert main(_edit_argv(path, tmp_path / "in") + ["--lora", f"{lora}:0.6", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "edit_00000.png").read_bytes() == (tmp_path / "expected" / "edit_00000.png").read_bytes()
    for musubi, scale in ((False, 0.7), (True, 0.4)):
        file = _wan_file(model, tmp_path / f"wan{musubi}.safetensors", musubi, 5 + musubi)
        theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
        theirs.load_lora_weights(str(file))
        theirs.fuse_lora(lora_scale=scale)
        theirs.unload_lora_weights()
        merged = types.SimpleNamespace(transformer=copy.deepcopy(model.transformer))
        merge_sd_loras(merged, read_chronoedit_loras([(file, scale)]))
        theirs, merged = theirs.transformer.state_dict(), merged.transformer.state_dict()
        worst = max(float((v - theirs[k]).abs().max()) for k, v in merged.items())
        changed = [k for k, v in merged.items() if not torch.equal(v, start[k])]
        print(f"{'musubi' if musubi else 'diffusion_model.'} file weights: {worst:.2e}, {len(changed)} changed")
        assert worst < 1e-6 and len(changed) == (24 if musubi else 26)


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")
def test_chronoedit_wan_lora_biases_are_peft_lora_bias(tiny_chronoedit, tmp_path):
    """Wan's .diff_b keys, which diffusers' converter turns into PEFT LoRA biases (lora_B.bias): load_lora_weights +
    fuse_lora(lora_scale=0.7)'s weights and biases (bias += 0.7 (alpha / r) diff_b) and final latents. Another family
    (Sana) still refuses a lora_B.bias key."""
    import copy

    from safetensors.torch import save_file
    from test_sd_lora import assert_files_refused
    from diffkit.interop.chronoedit_lora import read_chronoedit_loras
    from diffkit.interop.sana_lora import read_sana_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, path, model = tiny_chronoedit
    file = _wan_file(model, tmp_path / "wan_diff_b.safetensors", False, 9, diff_b=True)
    theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.load_lora_weights(str(file))
    theirs.fuse_lora(lora_scale=0.7)
    theirs.unload_lora_weights()
    ours = load_chronoedit(path, progress=False, lora=[(file, 0.7)])
    reference, start = theirs.transformer.state_dict(), model.transformer.state_dict()
    merged = ours.transformer.state_dict()
    worst = max(float((v - reference[k]).abs().max()) for k, v in merged.items())
    biases = [k for k, v in merged.items() if k.endswith(".bias") and not torch.equal(v, start[k])]
    image, latents, final = _image(), _latents(), {}
    with torch.no_grad():
        theirs(image, PROMPT, height=H, width=W, num_inference_steps=2, latents=latents, output_type="latent",
               callback_on_step_end=lambda p, i, t, kw: final.update(kw) or {})
    error = relative_error(edit_image(ours, image, PROMPT, steps=2, latents=latents, return_latents=True),
                           final["latents"])
    print(f"diff_b file: weights / biases {worst:.2e}, {len(biases)} biases changed, latents {error:.2e}")
    assert worst < 5e-7 and len(biases) == 26 and error < 1e-5
    q = "transformer.blocks.0.attn1.to_q"
    save_file({f"{q}.lora_A.weight": torch.ones(2, 24), f"{q}.lora_B.weight": torch.ones(24, 2),
               f"{q}.lora_B.bias": torch.ones(3)}, tmp_path / "short_bias.safetensors")
    with pytest.raises(DiffkitError, match=r"to_q has a bias of shape \(24,\), the file's \(3,\)"):
        merge_sd_loras(types.SimpleNamespace(transformer=copy.deepcopy(model.transformer)),
                       read_chronoedit_loras([tmp_path / "short_bias.safetensors"]))
    a = "transformer.transformer_blocks.0.attn.to_q"
    assert_files_refused(read_sana_loras, tmp_path, [({f"{a}.lora_A.weight": torch.ones(2, 8), f"{a}.lora_B.weight":
                                                       torch.ones(8, 2), f"{a}.lora_B.bias": torch.ones(8)},
                                                      "to_q.lora_B.bias' is not supported on a Sana folder")])


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters", "ignore:`lora_bias=True` was passed")
def test_chronoedit_lora_biases_diffusers_cannot_load_or_fuse_are_refused(tiny_chronoedit, tmp_path):
    """LoRA biases that load_lora_weights + fuse_lora(lora_scale=0.5) fail on (diffusers gives peft use_dora and
    lora_bias for the whole file): with DoRA magnitudes anywhere in the file (LoraConfig's ValueError), and, on a
    transformer with to_q's bias removed (a ChronoEdit transformer's Linears all have one), a file with any LoRA bias
    adapting to_q (peft's merge: RuntimeError); diffkit refuses each in one line naming the key. The same bias-less
    to_q without biases in the file merges as fuse_lora does; a Wan file's dora_scale fails diffusers' converter."""
    import copy

    from safetensors.torch import save_file
    from diffkit.interop.chronoedit_lora import read_chronoedit_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, _, model = tiny_chronoedit
    g = torch.Generator().manual_seed(4)

    def lora(module, bias=False, dora=False, key="transformer.blocks.0.attn1."):
        return {f"{key}{module}.lora_A.weight": torch.randn(2, 24, generator=g),
                f"{key}{module}.lora_B.weight": torch.randn(24, 2, generator=g),
                **({f"{key}{module}.lora_B.bias": torch.randn(24, generator=g)} if bias else {}),
                **({f"{key}{module}.lora_magnitude_vector": torch.rand(24, generator=g) + 1} if dora else {})}

    wan = {k.replace("transformer.blocks.0.attn1.to_q.lora_A", "diffusion_model.blocks.0.self_attn.q.lora_down")
           .replace("transformer.blocks.0.attn1.to_q.lora_B", "diffusion_model.blocks.0.self_attn.q.lora_up"): v
           for k, v in lora("to_q").items()}
    cases = [({**lora("to_q", dora=True), **lora("to_k", bias=True)}, False, "lora_bias=True is not supported for DoRA",
              "key 'transformer.blocks.0.attn1.to_k.lora_B.bias' is a LoRA bias in a file with DoRA magnitudes "
              "('transformer.blocks.0.attn1.to_q.lora_magnitude_vector')"),
             (lora("to_q", bias=True, dora=True), False, "not supported for DoRA", "to_q.lora_B.bias' is a LoRA bias"),
             ({**lora("to_q"), **lora("to_k", bias=True)}, True, "Impossible to merge LoRA with `lora_bias=True`",
              "module blocks.0.attn1.to_q has no bias, in a file with LoRA biases (blocks.0.attn1.to_k.lora_B.bias)"),
             (lora("to_q", bias=True), True, "base layer has no bias", "module blocks.0.attn1.to_q has no bias"),
             ({**wan, "diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(24),
               "diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(1, 24)}, False, "should be empty",
              "q.dora_scale' is not supported on a ChronoEdit folder (ChronoEditPipeline's "
              "_convert_non_diffusers_wan_lora_to_diffusers does not map it"),
             ({**lora("to_q"), **lora("to_k")}, True, None, None)]
    for i, (tensors, bare, failure, refusal) in enumerate(cases):
        save_file(tensors, tmp_path / f"case{i}.safetensors")
        theirs, ours = copy.deepcopy(pipe.transformer), copy.deepcopy(model.transformer)
        if bare:
            theirs.blocks[0].attn1.to_q.bias = ours.blocks[0].attn1.to_q.bias = None
        fused = type(pipe)(**{**pipe.components, "transformer": theirs})
        if failure is None:
            fused.load_lora_weights(str(tmp_path / f"case{i}.safetensors"))
            fused.fuse_lora(lora_scale=0.5)
            fused.unload_lora_weights()
            merge_sd_loras(types.SimpleNamespace(transformer=ours), read_chronoedit_loras([(tmp_path / f"case{i}"
                                                                                            ".safetensors", 0.5)]))
            reference, start = theirs.state_dict(), pipe.transformer.state_dict()
            worst = max(float((v - reference[k]).abs().max()) for k, v in ours.state_dict().items())
            print(f"bias-less to_q, no LoRA biases: weights {worst:.2e}")
            assert worst < 1e-6 and not torch.equal(reference["blocks.0.attn1.to_q.weight"],
                                                    start["blocks.0.attn1.to_q.weight"])
            continue
        with pytest.raises((ValueError, RuntimeError), match=re.escape(failure)):
            fused.load_lora_weights(str(tmp_path / f"case{i}.safetensors"))
            fused.fuse_lora(lora_scale=0.5)
        with pytest.raises(DiffkitError, match=re.escape(refusal)) as refused:
            merge_sd_loras(types.SimpleNamespace(transformer=ours),
                           read_chronoedit_loras([(tmp_path / f"case{i}.safetensors", 0.5)]))
        assert "\n" not in str(refused.value)


def test_chronoedit_lora_keys_the_loader_would_not_load_are_refused(tiny_chronoedit, tmp_path, capsys):
    """What WanLoraLoaderMixin does not load as the file says (drops silently, or fails on): one line naming the key
    (``diffkit edit --lora``: before any weight is read, no output folder)."""
    from test_sd_lora import assert_files_refused
    from diffkit.interop.chronoedit_lora import read_chronoedit_loras
    _, path, _ = tiny_chronoedit
    a, b = "blocks.0.attn1.to_q.lora_A.weight", "blocks.0.attn1.to_q.lora_B.weight"
    good = {"transformer." + a: torch.ones(2, 24), "transformer." + b: torch.ones(24, 2)}
    wan = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.ones(2, 24),
           "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(24, 2)}
    musubi = {"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.ones(2, 24),
              "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.ones(24, 2),
              "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(2.0)}
    assert_files_refused(read_chronoedit_loras, tmp_path, [({**base, **change}, why) for base, change, why in [
            (good, {"transformer.blocks.0.attn1.to_q.alpha": torch.tensor(1.0)}, "to_q.alpha' is not supported"),
            (good, {"text_encoder.q.lora_A.weight": torch.ones(2, 4)}, "adapts the transformer only"),
            (good, {"transformer.blocks.0.attn1.to_k.lora_B.bias": torch.ones(24)}, "with no lora_A / lora_B"),
            (good, {"transformer.blocks.0.attn1.dora_scale": torch.ones(1, 24)}, "drops dora_scale"),
            (wan, {"diffusion_model.blocks.0.self_attn.k.diff_b": torch.ones(24)}, "without its module's LoRA"),
            (wan, {"diffusion_model.blocks.0.norm3.diff": torch.ones(24)}, "norm3.diff' is not supported"),
            (wan, {"transformer." + a: torch.ones(2, 24)}, f"'transformer.{a}' is not supported"),
            (wan, {"diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.ones(2, 24),
                   "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.ones(24, 2)}, "fails on this"),
            (wan, {"diffusion_model.blocks.0.self_attn.k.lora_down.weight": torch.ones(2, 24)}, "no lora_B"),
            (musubi, {}, "_convert_musubi_wan_lora_to_diffusers fails on this file"),
            (good, {"transformer.blocks.0.attn1.to_k.lokr_w1": torch.ones(2, 2)}, "is a LyCORIS LoKr tensor")]])
    (tmp_path / "in").mkdir()
    _image().save(tmp_path / "in" / "a.png")
    capsys.readouterr()
    argv = _edit_argv(path, tmp_path / "in") + ["--lora", str(tmp_path / "refused0.safetensors"), "--out",
                                                str(tmp_path / "never")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key 'transformer.blocks.0.attn1.to_q.alpha' is not supported on a ChronoEdit" in err[0]
    assert not (tmp_path / "never").exists()
