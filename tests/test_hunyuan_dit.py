"""HunyuanDiT folders (diffkit.interop.hunyuan_dit): diffkit's text_to_image against diffusers' own
HunyuanDiTPipeline and HunyuanDiTPAGPipeline on a tiny random folder (a BertModel with a word-piece vocabulary of a
few words, the T5 encoder and unigram tokenizer of tests/test_interop_sd3.py, a HunyuanDiT2DModel of 2 blocks, an
AutoencoderKL of factor 8, HunyuanDiT's DDPMScheduler with v-prediction; nothing downloaded), the DDPM step noise
drawn from the same per-sample generators, and ``diffkit sample`` on it (the library's grid byte for byte; flags
that do not apply: one line)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.images import save_grid  # noqa: E402
from diffkit.interop.hunyuan_dit import is_hunyuan_dit_folder, load_hunyuan_dit, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402

from _pixart_helpers import assert_sample_refusals, cfg_sample_argv, edited_copy  # noqa: E402
from test_interop_diffusers import relative_error  # noqa: E402
from test_interop_sd3 import T5_WORDS, tiny_t5_tokenizer  # noqa: E402
from _pipeline_folders import reloaded  # noqa: E402

PROMPTS = ["a photo of a cat", "hot dog"]
SIZE = dict(height=64, width=96)  # latents 8 x 12: a non-square rotary grid


def tiny_hunyuan_dit_pipeline(root, prediction_type="v_prediction", layers=2):
    """A HunyuanDiTPipeline of random weights: BERT hidden 16 (77 tokens), T5 d_model 32 (256 tokens), transformer
    hidden 16 of ``layers`` blocks (2; 4: one long skip, which a ControlNet feeds), 2 heads of 8, patch 2, latents
    4 x 8 x 8, a 4-level VAE (factor 8), DDPMScheduler as HunyuanDiT's (scaled-linear, leading spacing,
    steps_offset 1, no clipping)."""
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + T5_WORDS) + "\n")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=5 + len(T5_WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=80)).eval()
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=4 + len(T5_WORDS), d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, dropout_rate=0.0)).eval()
    transformer = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8, hidden_size=16,
        num_layers=layers, cross_attention_dim=16, cross_attention_dim_t5=32, pooled_projection_dim=16)
    vae = diffusers.AutoencoderKL(block_out_channels=[8] * 4, in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                  norm_num_groups=8, layers_per_block=1, sample_size=32, scaling_factor=0.13025)
    scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.018,
                                        clip_sample=False, prediction_type=prediction_type, steps_offset=1,
                                        timestep_spacing="leading")
    return diffusers.HunyuanDiTPipeline(
        vae=vae, text_encoder=bert, tokenizer=transformers.BertTokenizer(str(vocab)), transformer=transformer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        text_encoder_2=t5, tokenizer_2=tiny_t5_tokenizer())


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """(pipeline loaded from the folder, folder, HunyuanDiT) of a tiny random HunyuanDiTPipeline."""
    root = tmp_path_factory.mktemp("hunyuan_dit")
    path = root / "hunyuan"
    tiny_hunyuan_dit_pipeline(root).save_pretrained(path)
    return reloaded(path, diffusers.HunyuanDiTPipeline, load_hunyuan_dit)


def run_both(pipe, hunyuan, pag=None, steps=3, **call):
    """(diffkit's z_0, the pipeline's) for the same z_T and per-sample generators (seed 7 + i)."""
    noise = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    negative = call.pop("negative_prompt", None)
    with torch.no_grad():
        theirs = pipe(PROMPTS, num_inference_steps=steps, latents=noise.clone(), output_type="latent",
                      use_resolution_binning=False, generator=generators_from_seed(7, 2), **SIZE, **call,
                      negative_prompt=None if negative is None else [negative] * 2, **(pag or {})).images
    ours = text_to_image(hunyuan, PROMPTS, steps=steps, latents=noise.clone(), seed=7, return_latents=True,
                         negative_prompt=negative, **SIZE, **call, **(pag or {}))
    assert theirs.abs().max() > 0.5
    return ours, theirs


@pytest.mark.parametrize("call", [
    dict(guidance_scale=4.0, negative_prompt="ugly blurry", guidance_rescale=0.7, original_size=(512, 768),
         target_size=(32, 48), crops_coords_top_left=(8, 16)),
    dict(guidance_scale=1.0, target_size=(32, 48))])
def test_hunyuan_dit_matches_the_pipeline(folder, call):
    """z_0 equals HunyuanDiTPipeline's (DDPM steps with their noise; CFG with a negative prompt, guidance rescale
    and size conditions; s = 1: its unguided loop); the CFG case's images too."""
    pipe, path, hunyuan = folder
    assert is_hunyuan_dit_folder(path) and hunyuan.folder_sampler() == ("ddpm", {"variance_type": "fixed_small"})
    ours, theirs = run_both(pipe, hunyuan, **call)
    assert relative_error(ours, theirs) < 1e-5  # measured 1.0e-6 (CFG + rescale), 1.0e-6 (s = 1)
    if call["guidance_scale"] > 1:
        with torch.no_grad():
            decoded = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor, return_dict=False)[0]
        assert relative_error(hunyuan.decode(ours), decoded) < 1e-5


@pytest.mark.parametrize("scale,pag", [(4.0, dict(pag_scale=2.0, pag_adaptive_scale=0.001)),
                                       (3.0, dict(pag_scale=1.5, pag_layers=["blocks.0"]))])
def test_pag_matches_the_pag_pipeline(folder, scale, pag):
    """``pag_scale`` equals HunyuanDiTPAGPipeline (its processors on blocks.1 with the adaptive scale / on
    blocks.0; CFG and PAG in one call of 3 halves)."""
    pipe, _, hunyuan = folder
    layers = pag.pop("pag_layers", None)
    pag_pipe = diffusers.HunyuanDiTPAGPipeline(**pipe.components, pag_applied_layers=layers or "blocks.1")
    pag_pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = pag_pipe(PROMPTS, num_inference_steps=3, latents=noise.clone(), output_type="latent",
                          use_resolution_binning=False, generator=generators_from_seed(7, 2), guidance_scale=scale,
                          **SIZE, **pag).images
    ours = text_to_image(hunyuan, PROMPTS, steps=3, latents=noise.clone(), seed=7, return_latents=True,
                         guidance_scale=scale, pag_layers=layers, **SIZE, **pag)
    assert relative_error(ours, theirs) < 1e-5  # measured 1.1e-6 (CFG + PAG), 9.7e-7 (PAG alone)
    plain = text_to_image(hunyuan, PROMPTS, steps=3, latents=noise.clone(), seed=7, return_latents=True,
                          guidance_scale=scale, **SIZE)
    assert relative_error(plain, theirs) > 1e-3  # PAG changed the draw


@pytest.mark.parametrize("scheduler,change,sampler", [
    ("DDPMScheduler", {"prediction_type": "epsilon"}, "ddpm"),
    ("DPMSolverMultistepScheduler", {}, "dpm-solver++-2m")])
def test_other_scheduler_configs_match_the_pipeline(folder, tmp_path, scheduler, change, sampler):
    """A DDPMScheduler with prediction_type epsilon (the config's), and the folder's scheduler swapped for a
    DPMSolverMultistepScheduler (``from_config``, v-prediction; PixArt's mapping), match too."""
    pipe, path, _ = folder
    copy = edited_copy(path, tmp_path / "copy", "model_index.json", {"scheduler": ["diffusers", scheduler]})
    cls = getattr(diffusers, scheduler)
    cls.from_config({**pipe.scheduler.config, **change}).save_pretrained(copy / "scheduler")
    other = diffusers.HunyuanDiTPipeline(**{**pipe.components, "scheduler": cls.from_pretrained(copy / "scheduler")})
    other.set_progress_bar_config(disable=True)
    hunyuan = load_hunyuan_dit(copy, progress=False)
    assert hunyuan.folder_sampler()[0] == sampler and hunyuan.prediction_type == change.get("prediction_type",
                                                                                            "v_prediction")
    ours, theirs = run_both(other, hunyuan, steps=2, guidance_scale=3.0, guidance_rescale=0.5)
    assert relative_error(ours, theirs) < 1e-5  # measured 5.1e-7 (epsilon DDPM), 4.5e-7 (DPM-Solver++)


def test_bad_input_refused(folder):
    _, _, hunyuan = folder
    for call, expected in [
        (dict(negative_prompt="ugly", guidance_scale=1.0), "a negative prompt with guidance_scale=1"),
        (dict(guidance_rescale=0.5, guidance_scale=1.0), "guidance_rescale=0.5 with guidance_scale=1"),
        (dict(pag_scale=2.0, guidance_scale=1.0), "pag_scale=2 with guidance_scale=1"),
        (dict(max_sequence_length=100), "max_sequence_length=100 is not allowed for a HunyuanDiT folder"),
        (dict(resolution_binning=True), "resolution_binning is not allowed for a HunyuanDiT folder"),
        (dict(height=24), "height x width 24x16 is not allowed; give positive multiples of 16"),
        (dict(original_size=(1024,)), r"original_size=\(1024,\) is not allowed; give two integers >= 0"),
        (dict(pag_layers=["blocks.1"]), r"pag_layers=\['blocks.1'\] needs pag_scale"),
        (dict(pag_scale=1.0, pag_layers=["blocks.7"]), "pag layer 'blocks.7' matches no self-attention layer of "
                                                       "this HunyuanDiT transformer")]:
        with pytest.raises(DiffkitError, match=expected):
            text_to_image(hunyuan, "hot", steps=1, **{"height": 16, "width": 16, **call})


def test_sample_command_is_the_library_and_refuses_what_does_not_apply(folder, tmp_path, capsys):
    _, path, hunyuan = folder
    out = tmp_path / "grid.png"
    assert main(cfg_sample_argv(path, PROMPTS, out, "--height", "32", "--width", "48", "--guidance-rescale", "0.5",
                                "--pag-scale", "1.5", "--pag-adaptive-scale", "0.001")) == 0
    images = text_to_image(hunyuan, PROMPTS, steps=2, seed=None, generator=generators_from_seed(5, 2), height=32,
                           width=48, negative_prompt="ugly", guidance_scale=3.0, guidance_rescale=0.5, pag_scale=1.5,
                           pag_adaptive_scale=0.001, output_range="-1,1")
    save_grid(images, tmp_path / "expected.png", 1)
    assert out.read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert_sample_refusals(main, path, tmp_path, capsys, [
        (["--max-sequence-length", "100"], "--max-sequence-length does not apply to a HunyuanDiT folder"),
        (["--pag-scale", "1", "--pag-interval", "0", "500"], "--pag-interval does not apply to a HunyuanDiT"),
        (["--lora", str(path)], "--lora does not apply to a HunyuanDiT folder"),
        (["--flow-shift", "2"], "--flow-shift does not apply to a HunyuanDiT folder"),
        (["--pag-scale", "1", "--pag-layers", "blocks.9"], "pag layer 'blocks.9' matches no self-attention layer"),
        (["--height", "24"], "--height 24 is not allowed; give a positive multiple of 16")], "a HunyuanDiT")


@pytest.mark.parametrize("file,change,expected", [
    ("model_index.json", {"text_encoder": ["transformers", "CLIPTextModel"]}, "text_encoder is a 'CLIPTextModel'"),
    ("model_index.json", {"scheduler": ["diffusers", "EulerDiscreteScheduler"]}, "scheduler is a 'EulerDiscrete"),
    ("transformer/config.json", {"learn_sigma": False}, "learn_sigma=False, whose output HunyuanDiTPipeline halves"),
    ("transformer/config.json", {"text_len_t5": 128}, "text_len, text_len_t5 = 77, 128; allowed: 77, 256"),
    ("vae/config.json", {"block_out_channels": [8, 8]}, "VAE has factor 2; allowed: 8"),
    ("scheduler/scheduler_config.json", {"clip_sample": True}, "DDPMScheduler has clip_sample=True"),
    ("scheduler/scheduler_config.json", {"variance_type": "fixed_large"}, "variance_type='fixed_large', which"),
])
def test_folders_diffkit_does_not_drive_are_refused(folder, tmp_path, file, change, expected):
    with pytest.raises(DiffkitError, match=expected):
        load_hunyuan_dit(edited_copy(folder[1], tmp_path / "copy", file, change), progress=False)


def test_size_condition_flags_are_the_pipelines(folder, tmp_path, capsys):
    """``--original-size``, ``--target-size``, ``--crops-coords-top-left``: ``diffkit sample`` writes the library's
    image with HunyuanDiTPipeline's original_size / target_size / crops_coords_top_left (which match the pipeline,
    :func:`test_hunyuan_dit_matches_the_pipeline`); without them the default conditions; a transformer that ignores
    them (use_style_cond_and_image_meta_size false): one line."""
    from _sana_helpers import check_option_flags
    _, path, hunyuan = folder
    sizes = {"original_size": (512, 768), "target_size": (32, 48), "crops_coords_top_left": (8, 16)}
    check_option_flags(path, hunyuan, text_to_image, tmp_path, 2, 32, ["--original-size", "512,768", "--target-size",
                       "32,48", "--crops-coords-top-left", "8,16"], sizes)
    copy = edited_copy(path, tmp_path / "copy", "transformer/config.json",
                       {"use_style_cond_and_image_meta_size": False})
    assert_sample_refusals(main, copy, tmp_path, capsys, [
        (["--target-size", "32,48"], "--target-size does not apply to " + str(copy) + ": its transformer has "
                                     "use_style_cond_and_image_meta_size=false")])
    for flag, value in (("--original-size", "512"), ("--crops-coords-top-left", "8,-1")):
        with pytest.raises(SystemExit):
            main(["sample", "--checkpoint", str(path), "--prompt", "hot", flag, value])
        assert f"argument {flag}: '{value}' is not two integers >= 0" in capsys.readouterr().err
