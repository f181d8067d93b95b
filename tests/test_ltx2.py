"""LTX-2 (diffkit.interop.ltx2) against diffusers' LTX2Pipeline on a tiny random folder: a 2-layer Gemma-3 (built
from a config), 1-layer connectors, a 2-block audio-video transformer, 1-level video and audio VAEs, a 2-stage
vocoder; zero-initialised layers and the VAEs' normalisation buffers randomised."""
import pytest
import torch

import diffusers
import transformers

from _sana_helpers import tiny_gemma_tokenizer
from diffkit.errors import DiffkitError
from diffkit.interop import ltx2

PROMPT, FRAMES, SIZE, STEPS = "a photo of cat", 9, 32, 2
RUN = dict(num_frames=FRAMES, height=SIZE, width=SIZE, max_sequence_length=16, frame_rate=12.0)  # L = 18.75 -> 19


def _tiny_pipeline():
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    torch.manual_seed(0)
    tok = tiny_gemma_tokenizer()
    gemma = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(
        text_config=dict(vocab_size=len(tok.get_vocab()), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=64,
                         max_position_embeddings=256),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)).eval()
    connectors = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=3, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1,
        video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_double_precision=False)
    transformer = diffusers.LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=4,
        audio_cross_attention_dim=8, num_layers=2, caption_channels=16, rope_double_precision=False,
        perturbed_attn=True)  # (STG skips self-attention only with the perturbed processor)
    vae = diffusers.AutoencoderKLLTX2Video(
        latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,), layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,), decoder_spatio_temporal_scaling=(True,),
        decoder_inject_noise=(False, False), downsample_type=("spatial",), upsample_residual=(False,),
        upsample_factor=(1,), timestep_conditioning=True, patch_size=1, patch_size_t=1, decoder_causal=False,
        scaling_factor=1.3)
    audio_vae = diffusers.AutoencoderKLLTX2Audio(base_channels=8, output_channels=2, ch_mult=(1,), num_res_blocks=1,
                                                 latent_channels=2, mel_bins=16, resolution=16)
    vocoder = LTX2Vocoder(in_channels=32, hidden_channels=16, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
                          resnet_kernel_sizes=[3], resnet_dilations=[[1, 3]], output_sampling_rate=16000)
    with torch.no_grad():
        for module in (transformer, connectors, vae, audio_vae, vocoder):
            for p in module.parameters():
                if not p.any():
                    p.normal_(0, 0.2)
        for module in (vae, audio_vae):
            module.latents_mean.normal_(0, 0.3)
            module.latents_std.uniform_(0.5, 1.5)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1)
    return diffusers.LTX2Pipeline(scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=gemma,
                                  tokenizer=tok, connectors=connectors, transformer=transformer, vocoder=vocoder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ltx2")
    pipe = _tiny_pipeline()
    pipe.save_pretrained(path)
    opts = dict(spatio_temporal_guidance_blocks=[1], num_inference_steps=STEPS, decode_timestep=0.05,
                decode_noise_scale=0.025, **RUN)
    refs = {}
    for kind in ("latent", "pt"):
        out = pipe(PROMPT, generator=[torch.Generator().manual_seed(3)], output_type=kind, **opts)
        refs[kind] = (out.frames, out.audio)
    return path, refs, ltx2.load_ltx2(path, progress=False)


def refused_in_one_line(call, text):
    with pytest.raises(DiffkitError) as info:
        call()
    assert text in str(info.value) and "\n" not in str(info.value), str(info.value)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_ltx2_matches_pipeline(folder):
    """Latents (video, audio), frames and the waveform against LTX2Pipeline with its default guidance (CFG 3 / 7,
    STG 1 at block 1, modality isolation 3, rescale 0.7) and a timestep-conditioned VAE's decode noise."""
    _, refs, model = folder
    opts = dict(stg_blocks=(1,), steps=STEPS, decode_timestep=0.05, decode_noise_scale=0.025, seed=3, **RUN)
    video, audio = ltx2.text_to_video(model, PROMPT, return_latents=True, **opts)
    mean, std = model.vae.latents_mean.view(1, -1, 1, 1, 1), model.vae.latents_std.view(1, -1, 1, 1, 1)
    ref_video, ref_audio = refs["latent"]
    assert _rel(video * std / model.vae.config.scaling_factor + mean, ref_video) <= 1e-5
    assert _rel(model.audio_latents(audio), ref_audio) <= 1e-5
    frames, wave = ltx2.text_to_video(model, PROMPT, output_range="0,1", **opts)
    assert _rel(frames, refs["pt"][0]) <= 1e-5
    assert wave.shape == refs["pt"][1].shape and _rel(wave, refs["pt"][1]) <= 1e-5
    other, sound = ltx2.text_to_video(model, PROMPT, sampler="ddpm", return_latents=True, **opts)  # stochastic
    assert torch.isfinite(other).all() and torch.isfinite(sound).all() and not torch.equal(other, video)


@pytest.mark.parametrize("change, options, text", [
    ("pipeline", {}, "is not a LTX-2 folder"),
    ("patch", {}, "patch_size"),
    ("stg", {"stg_blocks": ()}, "stg_blocks"),
    ("rescale", {"guidance_rescale": 2.0}, "guidance_rescale"),
])
def test_ltx2_refusals(folder, tmp_path, change, options, text):
    """One line for a bad folder (before any weight is read: the JSON alone is copied) or a bad request."""
    import json
    import shutil
    path, _, model = folder
    if change in ("pipeline", "patch"):
        copy = tmp_path / "f"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.safetensors"))
        name = "model_index.json" if change == "pipeline" else "transformer/config.json"
        data = json.loads((copy / name).read_text())
        data.update({"_class_name": "LTXPipeline"} if change == "pipeline" else {"audio_patch_size": 2})
        (copy / name).write_text(json.dumps(data))
        refused_in_one_line(lambda: ltx2.load_ltx2(copy, progress=False), text)
    else:
        refused_in_one_line(lambda: ltx2.text_to_video(model, PROMPT, steps=1, **RUN, **options), text)


def test_ltx2_video_command_writes_video_and_sound(folder, tmp_path, capsys):
    """diffkit video on the folder: the APNG is the library's 8-bit video, the WAVs beside it the library's waveform
    (16-bit); an .mp4 grid (save_video_grid as run() calls it) carries it as an AAC track at the vocoder's rate;
    --fps other than 24 and diffkit sample on the folder are one line."""
    import wave

    import numpy as np

    from diffkit.cli import main
    from diffkit.images import to_uint8
    from diffkit.movie import movie_audio
    from diffkit.video import read_video, save_video_grid
    path, _, model = folder
    argv = ["video", "--checkpoint", str(path), "--prompt", PROMPT, "--seed", "5", "--frames", str(FRAMES),
            "--height", str(SIZE), "--width", str(SIZE), "--steps", "2"]
    assert main(argv + ["--out", str(tmp_path / "v.png"), "--individual", str(tmp_path / "each")]) == 0, \
        capsys.readouterr().err
    video, sound = ltx2.text_to_video(model, PROMPT, steps=2, num_frames=FRAMES, height=SIZE, width=SIZE, seed=5)
    written = read_video(tmp_path / "each" / "video_00000.png")
    assert torch.equal(((written + 1) * 127.5).round().to(torch.uint8),
                       torch.from_numpy(to_uint8(video[0])).permute(0, 3, 1, 2))
    for file in (tmp_path / "v.wav", tmp_path / "each" / "video_00000.wav"):  # the grid's (one video) and its own
        with wave.open(str(file)) as wav:
            assert (wav.getframerate(), wav.getnchannels()) == (16000, 2)
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2).T / 32767
        assert np.abs(pcm - sound[0].clamp(-1, 1).numpy()).max() <= 1 / 32767
    save_video_grid(video, tmp_path / "v.mp4", fps=24, audio=sound, sample_rate=model.sample_rate)  # run()'s call
    track, rate = movie_audio(tmp_path / "v.mp4")
    assert rate == 16000 and track.shape[0] == 2 and track.shape[1] >= sound.shape[2]
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(path), "--prompt", PROMPT, "--out", str(tmp_path / "s.png")]) == 2
    assert "diffkit video --checkpoint" in capsys.readouterr().err
    assert main(argv + ["--fps", "30", "--out", str(tmp_path / "w.png")]) == 2
    err = capsys.readouterr().err
    assert "--fps 30 is not allowed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w.png").exists()


@pytest.mark.parametrize("audio, rate, text", [(torch.zeros(3, 8), 16000, "with 1 or 2 channels"),
                                               (torch.zeros(2, 8), 0, "sample_rate")])
def test_ltx2_audio_track_refusals(audio, rate, text):
    """diffkit.movie's audio writers refuse a waveform of 3 channels or a sample rate of 0 in one line."""
    from diffkit.movie import wav_bytes
    refused_in_one_line(lambda: wav_bytes(audio.numpy(), rate), text)
