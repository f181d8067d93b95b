"""HiDream-I1 folders (diffkit.interop.hidream): diffkit's text_to_image against diffusers' own HiDreamImagePipeline
on a tiny random folder (tests/_hidream_helpers.py: two CLIPs with projections, T5, Llama, a one-double / one-single
MoE block transformer, nothing downloaded) with its FlowMatchEuler, a dynamically shifted one and a flow UniPC
scheduler, and ``diffkit sample`` on it (the library's grid byte for byte; what does not apply: one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hidream import folder_sampler, is_hidream_folder, load_hidream, text_to_image  # noqa: E402

from _hidream_helpers import tiny_hidream_pipeline  # noqa: E402
from _pixart_helpers import assert_sample_refusals, cfg_sample_argv, edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SCHEDULERS = {  # HiDream-I1-Full's flow UniPC; a FlowMatchEuler with use_dynamic_shifting (mu from max_seq)
    "unipc": {"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 3.0,
              "prediction_type": "flow_prediction"},
    "dynamic": {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True, "shift": 3.0}}


class _Folders(dict):
    """{kind: (pipeline loaded from the folder, folder, load_hidream of it)}: "euler" the tiny folder (FlowMatchEuler,
    shift 3), the others a copy with a scheduler of :data:`SCHEDULERS`, each built on its first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, kind):
        from diffkit.interop import library_progress_bars
        path = self.root / kind
        with library_progress_bars(False):
            if kind == "euler":
                tiny_hidream_pipeline(self.root).save_pretrained(path)
            else:
                config = SCHEDULERS[kind]
                edited_copy(self["euler"][1], path, "model_index.json", {"scheduler": ["diffusers",
                                                                                      config["_class_name"]]})
                getattr(diffusers, config["_class_name"]).from_config(config).save_pretrained(path / "scheduler")
            pipe = diffusers.HiDreamImagePipeline.from_pretrained(path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        self[kind] = (pipe, path, load_hidream(path, progress=False))
        return self[kind]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return _Folders(tmp_path_factory.mktemp("hidream"))


def _both(pipe, model, steps, scale, negative=None, seed=1, **prompts):
    """(diffkit's z_0, the pipeline's) from the same z (2 x 4 x 128 x 128: the pipeline's one area at f = 1) with
    max_sequence_length 12 (the tiny CLIPs' 16 positions)."""
    noise = torch.randn(2, 4, 128, 128, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        theirs = pipe(PROMPTS, negative_prompt=negative, num_inference_steps=steps, latents=noise.clone(),
                      guidance_scale=scale, max_sequence_length=12, output_type="latent", **prompts).images
    ours = text_to_image(model, PROMPTS, steps=steps, latents=noise, guidance_scale=scale, negative_prompt=negative,
                         max_sequence_length=12, return_latents=True,
                         encode={key.replace("prompt", "prompts"): value for key, value in prompts.items()})
    return ours, theirs


@pytest.mark.parametrize("scale,negative,prompts", [
    (4.0, "ugly blurry", {"prompt_3": ["the dog", "blurry cat"], "prompt_4": "ugly photo"}), (0.0, None, {})])
def test_hidream_matches_the_pipeline(folders, scale, negative, prompts):
    """z_0 and the images equal HiDreamImagePipeline's (CFG with a negative prompt and other T5 / Llama prompts;
    s = 0, HiDream-I1-Dev's: its unguided loop)."""
    pipe, path, model = folders["euler"]
    assert is_hidream_folder(path) and model.folder_sampler() == ("ddim", {})
    ours, theirs = _both(pipe, model, 3, scale, negative, **prompts)
    assert (theirs - torch.randn(2, 4, 128, 128, generator=torch.Generator().manual_seed(1))).abs().max() > 1
    assert relative_error(ours, theirs) < 1e-5  # measured 8.5e-7 (CFG), 1.7e-7 (s = 0)
    if not scale:  # another diffkit sampler on its own grid of the flow schedule: runs
        z0 = text_to_image(model, PROMPTS, sampler="dpm-solver++-2m", steps=2, guidance_scale=0.0,
                           max_sequence_length=12, return_latents=True)
        assert z0.shape == (2, 4, 128, 128) and bool(z0.isfinite().all())
    else:
        images = model.decode(ours)
        with torch.no_grad():
            expected = pipe.vae.decode(theirs / 0.3611 + 0.1159, return_dict=False)[0]
        assert relative_error(images, expected) < 1e-5  # measured 7.1e-7


@pytest.mark.parametrize("kind,steps,sampler", [("unipc", 5, "unipc"), ("dynamic", 3, "ddim")])
def test_other_schedulers_match_the_pipeline(folders, kind, steps, sampler):
    """HiDream-I1-Full's flow UniPC (int64 timesteps, order 2 with its corrector) as diffkit's unipc, and a dynamic
    FlowMatchEuler shift (the pipeline's mu of the transformer's max_seq) as ddim on its sigmas."""
    pipe, _, model = folders[kind]
    assert model.folder_sampler()[0] == sampler
    ours, theirs = _both(pipe, model, steps, 3.0, "ugly")
    assert relative_error(ours, theirs) < 1e-5  # measured 4.6e-7 (UniPC, 5 steps), 4.3e-7 (dynamic shift)


def test_bad_input_is_refused_in_one_line(folders):
    _, _, model = folders["euler"]
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(max_sequence_length=17), "max_sequence_length=17 is not allowed; allowed: 1..16"),
        (dict(height=64), "height x width 64x128 is not allowed: HiDreamImagePipeline draws every size at the area "
                          "of 128x128 .* would draw 90x180"),
        (dict(resolution_binning=True), "resolution_binning is not allowed for a HiDream folder"),
        (dict(encode={"prompts_2": ["a", "b", "c"]}), "prompt_2 has 3 entries for 1 prompts")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(model, "hot", steps=1, **{"max_sequence_length": 8, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folders, tmp_path, capsys):
    _, path, model = folders["euler"]
    out = tmp_path / "grid.png"
    assert main(cfg_sample_argv(path, PROMPTS, out, "--max-sequence-length", "10", "--height", "64",
                                "--width", "256")) == 0
    images = text_to_image(model, PROMPTS, steps=2, seed=5, negative_prompt="ugly", guidance_scale=3.0, height=64,
                           width=256, max_sequence_length=10, output_range="-1,1")
    assert images.shape == (2, 3, 64, 256)
    from diffkit.images import save_grid
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--flow-shift", "2"], "--flow-shift does not apply to a HiDream folder"),
        (["--guidance-rescale", "0.5", "--guidance-scale", "2"], "--guidance-rescale does not apply to a HiDream"),
        (["--height", "63"], "--height 63 is not allowed; give a positive multiple of 2"),
        (["--height", "64"], "height x width 64x128 is not allowed: HiDreamImagePipeline draws every size")],
        "a HiDream")


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"text_encoder_4": ["transformers", "LlamaModel"]}, "text_encoder_4 is a 'LlamaModel'"),
    ("transformer/config.json", {"in_channels": 16}, "in_channels, out_channels = 16, 4; allowed"),
    ("scheduler/scheduler_config.json", {"stochastic_sampling": True}, "stochastic_sampling=True, which draws"),
])
def test_folders_diffkit_does_not_drive_are_refused(folders, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected):
        load_hidream(edited_copy(folders["euler"][1], tmp_path / "copy", file, change), progress=False)


@pytest.mark.parametrize("change,expected", [
    ({"solver_type": "bh1"}, "solver_type='bh1'; allowed: 1-3 with 'bh2'"),
    ({"use_flow_sigmas": False}, "use_flow_sigmas=False, which diffkit's unipc"),
    ({"use_dynamic_shifting": True}, "use_dynamic_shifting=True"),
    ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type='sigma_min'")])
def test_unipc_options_diffkit_does_not_compute_are_refused(change, expected):
    config = {**SCHEDULERS["unipc"], **change}
    with pytest.raises(DiffkitError, match=expected):
        folder_sampler(config)
    assert folder_sampler({**SCHEDULERS["unipc"], "solver_order": 3, "disable_corrector": [1]}) == (
        "unipc", {"solver_order": 3, "solver_type": "bh2", "lower_order_final": True, "disable_corrector": [1]})


# attention (both streams), the MoE feed-forwards' shared and routed experts (w1 / w2 / w3), the final layer
HIDREAM_LORA = dict(r=4, lora_alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out", "to_q_t", "w1", "w2", "w3",
                                                         "final_layer.linear"],
                    rank_pattern={"w2": 2}, alpha_pattern={"to_v": 3.0})


def _fused(pipe, file, scale):
    """A copy of ``pipe`` after ``load_lora_weights(file)`` + ``fuse_lora(lora_scale=scale)``."""
    import copy
    theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
    theirs.set_progress_bar_config(disable=True)
    theirs.load_lora_weights(str(file))
    theirs.fuse_lora(lora_scale=scale, components=["transformer"])
    theirs.unload_lora_weights()
    return theirs


def _worst(ours, theirs) -> float:
    theirs = theirs.state_dict()
    return max(float((v - theirs[k]).abs().max()) for k, v in ours.state_dict().items())


def test_hidream_lora_is_load_lora_weights_and_fuse_lora(folders, tmp_path, capsys):
    """A diffusers-format file (HiDreamImagePipeline.save_lora_weights: attention, the MoE experts, rank / alpha
    patterns) at 0.3 and the same tensors as a diffusion_model. file (ComfyUI / ai-toolkit: alpha = r) at 0.7:
    load_lora_weights + fuse_lora's weights and z_0; ``diffkit sample --lora`` is the library."""
    import copy
    import types
    from safetensors.torch import load_file, save_file
    from diffkit.images import save_grid
    from diffkit.interop.hidream_lora import read_hidream_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    from test_sd_lora import fused_transformer_lora
    pipe, path, model = folders["euler"]
    lora, theirs = fused_transformer_lora(diffusers.HiDreamImagePipeline, path, tmp_path, HIDREAM_LORA, scale=0.3,
                                          loaded=pipe)
    ours = load_hidream(path, progress=False, lora=[(lora, 0.3)])
    assert _worst(ours.transformer, theirs.transformer) < 1e-6  # measured 1.2e-7
    assert _worst(ours.transformer, model.transformer) > 1e-2
    assert ours.transformer.double_stream_blocks[0].block.ff_i.experts[3].w2.weight.ne(
        model.transformer.double_stream_blocks[0].block.ff_i.experts[3].w2.weight).any()
    z0, expected = _both(theirs, ours, 2, 4.0, "ugly")
    assert relative_error(z0, expected) < 1e-5  # measured 9.1e-7
    comfy = tmp_path / "comfy.safetensors"
    save_file({"diffusion_model." + k.removeprefix("transformer."): v for k, v in load_file(lora).items()}, comfy)
    merged = types.SimpleNamespace(transformer=copy.deepcopy(model.transformer))
    merge_sd_loras(merged, read_hidream_loras([(comfy, 0.7)]))
    assert _worst(merged.transformer, _fused(pipe, comfy, 0.7).transformer) < 1e-6  # measured 6.0e-8
    out = tmp_path / "grid.png"
    assert main(cfg_sample_argv(path, PROMPTS, out, "--max-sequence-length", "10", "--height", "64", "--width", "256",
                                "--lora", f"{lora}:0.3")) == 0
    save_grid(text_to_image(ours, PROMPTS, steps=2, seed=5, negative_prompt="ugly", guidance_scale=3.0, height=64,
                            width=256, max_sequence_length=10, output_range="-1,1"), tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()


@pytest.mark.parametrize("keys,expected", [
    (["diffusion_model.final_layer.linear.lora_A.weight", "transformer.final_layer.linear.lora_B.weight"],
     "key 'transformer.final_layer.linear.lora_B.weight' is not supported on a HiDream folder (a diffusion_model "
     "file's keys all begin"),
    (["diffusion_model.final_layer.linear.alpha"], "key 'diffusion_model.final_layer.linear.alpha' is not supported"),
    (["transformer.final_layer.linear.lora_down.weight"], "converts no .alpha / lora_down / lora_up"),
    (["text_encoder.text_model.fc1.lora_A.weight"], "adapts the transformer only"),
    (["diffusion_model.x.dora_scale"], "diffusers drops dora_scale"),
    (["diffusion_model.double_stream_blocks.0.block.ff_i.gate.lora_A.weight",
      "diffusion_model.double_stream_blocks.0.block.ff_i.gate.lora_B.weight"],
     "key 'transformer.double_stream_blocks.0.block.ff_i.gate.lora_A.weight' names no Linear")])
def test_hidream_lora_keys_diffusers_would_not_load_are_refused(folders, tmp_path, keys, expected):
    """A file with a key HiDreamImageLoraLoaderMixin would not load (or, the MoE router, a module no Linear): one
    line, the transformer unchanged; diffusers' load_lora_weights raises on the same file (but the text-encoder
    key's, which it skips, and dora_scale's, which it drops)."""
    import copy
    import re
    from safetensors.torch import save_file
    from diffkit.interop.hidream_lora import read_hidream_loras
    from diffkit.interop.sd_lora import merge_sd_loras
    pipe, _, model = folders["euler"]
    save_file({k: torch.ones(2, 16) for k in keys}, tmp_path / "bad.safetensors")
    if not keys[0].startswith("text_encoder.") and "dora_scale" not in keys[0]:
        theirs = type(pipe)(**{**pipe.components, "transformer": copy.deepcopy(pipe.transformer)})
        with pytest.raises((ValueError, IndexError)):
            theirs.load_lora_weights(str(tmp_path / "bad.safetensors"))
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    with pytest.raises(DiffkitError, match=re.escape(expected)) as info:
        merge_sd_loras(model, read_hidream_loras([tmp_path / "bad.safetensors"]))
    assert "\n" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.transformer.state_dict().items())
