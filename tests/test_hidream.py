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
        (["--lora", str(out)], "--lora does not apply to a HiDream folder"),
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
