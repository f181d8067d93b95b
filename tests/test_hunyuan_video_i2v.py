"""HunyuanVideo image-to-video folders (diffkit.interop.hunyuan_video_i2v, diffkit video): image_to_video against
diffusers' own HunyuanVideoImageToVideoPipeline on tiny random folders of both image_condition_types: a
LlavaForConditionalGeneration (a 2-layer CLIP vision tower of width 8 on 48 x 48 pixels in patches of 2, so 576
image tokens as the template's, a 3-layer Llama of width 16) on a word-level tokenizer split by Llama 3's
pre-tokenizer pattern (so the template's <image> is token 5 and its prompt starts at token 103, as with Llama 3's),
the byte CLIP tokenizer of tests/test_interop_diffusers.py, a HunyuanVideoTransformer3DModel of one dual- and one
single-stream block (every zero-initialised weight randomised), the 4-level AutoencoderKLHunyuanVideo of
tests/test_hunyuan_video.py; nothing downloaded: 9 frames (3 latent frames) of 32 x 32, 2 steps."""
import re

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from diffkit.cli import main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.hunyuan_video_i2v import (check_hunyuan_video_i2v_folder, image_to_video,  # noqa: E402
                                               load_hunyuan_video_i2v, prompt_template)

from _pipeline_folders import changed_folder, reloaded  # noqa: E402
from _video_helpers import refused_in_one_line  # noqa: E402
from test_interop_diffusers import relative_error, tiny_clip_tokenizer  # noqa: E402

H = W = 32  # latents 4 x 4: 2 x 2 patches per frame
FRAMES, STEPS, Z = 9, 2, 4  # 3 latent frames; the VAE's latent channels
PROMPT, NEGATIVE = "a photo of a cat", "blurry dog"
SIZE = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS)
OURS = dict(num_frames=FRAMES, height=H, width=W, steps=STEPS)
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>",
           "<image>", "<unk>"]  # <pad> 5, <image> 6: LLaVA's pad_token_id, image_token_index


def tiny_llama3_tokenizer(texts):
    """A word-level tokenizer of ``texts``' words (and the template's), split as Llama 3's pre-tokenizer splits."""
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), behavior="isolated")
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for text in [prompt_template()["template"], *texts]:
        for part in re.split("|".join(map(re.escape, SPECIAL + ["{}"])), text):
            for piece, _ in split.pre_tokenize_str(part):
                vocab.setdefault(piece, len(vocab))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                                  special_tokens=[("<|begin_of_text|>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|eot_id|>", pad_token="<pad>", unk_token="<unk>")


def _folder(root, kind):
    """The saved tiny folder of ``kind`` (latent_concat: in_channels 2 C + 1, no guidance embeds; token_replace: C,
    guidance embeds) and the pipeline / diffkit loads of it."""
    llama_tokenizer = tiny_llama3_tokenizer([PROMPT, NEGATIVE, "a dog"])
    clip_tokenizer = tiny_clip_tokenizer(root)
    torch.manual_seed(0)
    llava = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=48, patch_size=2),
        text_config=transformers.LlamaConfig(
            vocab_size=len(llama_tokenizer.get_vocab()), hidden_size=16, intermediate_size=24, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=0,
            eos_token_id=4, pad_token_id=5),
        image_token_index=6, pad_token_id=5, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=576)).eval()
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=clip_tokenizer.vocab_size, max_position_embeddings=77)).eval()
    concat = kind == "latent_concat"
    transformer = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=2 * Z + 1 if concat else Z, out_channels=Z, num_attention_heads=2, attention_head_dim=8,
        num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1,
        guidance_embeds=not concat, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4),
        image_condition_type=kind)
    with torch.no_grad():  # zero-initialised layers (modulations, gates, ...) randomised: a test must be able to fail
        for p in transformer.parameters():
            if not bool(p.any()):
                p.normal_(0, 0.2)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=Z, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
        mid_block_add_attention=True)
    pipe = diffusers.HunyuanVideoImageToVideoPipeline(
        text_encoder=llava, tokenizer=llama_tokenizer, transformer=transformer, vae=vae,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
        tokenizer_2=clip_tokenizer, image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}))
    pipe.save_pretrained(root / kind)
    return reloaded(root / kind, diffusers.HunyuanVideoImageToVideoPipeline, load_hunyuan_video_i2v)


@pytest.fixture(scope="module")
def tiny_concat(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("hunyuan_i2v"), "latent_concat")


@pytest.fixture(scope="module")
def tiny_replace(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("hunyuan_i2v"), "token_replace")


def _image(seed=0, size=(40, 36)):
    from PIL import Image
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8))


def _latents(seed=7):
    return torch.randn(1, Z, 3, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))


def test_latent_concat_matches_the_pipeline(tiny_concat):
    """A latent_concat transformer (no guidance embeds): the final latents without frame 0 (output_type="latent")
    and the decoded frames without frames 0-3 (output_type="pt", in [0, 1]) as the pipeline's from the same noise, the
    latents with the prompt truncated (max_sequence_length 6); a batch of two videos (two images, two prompts): video
    1 as alone."""
    pipe, _, model = tiny_concat
    image, latents = _image(), _latents()
    ref = pipe(image, PROMPT, latents=latents.clone(), output_type="latent", **SIZE).frames
    ours = image_to_video(model, image, PROMPT, latents=latents.clone(), return_latents=True, **OURS)
    assert ours.shape == ref.shape == (1, Z, 2, H // 8, W // 8)
    assert relative_error(ours, ref) < 1e-5
    frames = pipe(image, PROMPT, latents=latents.clone(), output_type="pt", **SIZE).frames
    videos = image_to_video(model, image, PROMPT, latents=latents.clone(), output_range="0,1", **OURS)
    assert videos.shape == frames.shape == (1, FRAMES - 4, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    ref = pipe(image, PROMPT, latents=latents.clone(), output_type="latent", max_sequence_length=6, **SIZE).frames
    ours = image_to_video(model, image, PROMPT, latents=latents.clone(), return_latents=True, max_sequence_length=6,
                          **OURS)  # the prompt truncated: the assistant header cut, the crop's fallback
    assert relative_error(ours, ref) < 1e-5
    pair = image_to_video(model, [image, _image(3)], [PROMPT, "a dog"], seed=4, return_latents=True, **OURS)
    alone = image_to_video(model, _image(3), "a dog", seed=5, return_latents=True, **OURS)  # video 1: seed 4 + 1
    assert relative_error(pair[1:], alone) < 1e-5  # each video its own image, prompt and noise, whatever the batch


def test_token_replace_true_cfg_matches_the_pipeline(tiny_replace):
    """A token_replace transformer, embedded guidance 4.5, true CFG s = 3 against a negative prompt (its black image,
    interleave 2 against the prompt's 4: two transformer calls), video noise from generator seed 5: the final latents
    (frame 0 the image's) and decoded frames; another diffkit sampler (unipc) on its own grid keeps frame 0."""
    pipe, _, model = tiny_replace
    image = _image(1)
    common = dict(negative_prompt=NEGATIVE, true_cfg_scale=3.0, guidance_scale=4.5)
    ref = pipe(image, PROMPT, generator=torch.Generator().manual_seed(5), output_type="latent", **common,
               **SIZE).frames
    ours = image_to_video(model, image, PROMPT, seed=5, return_latents=True, **common, **OURS)
    assert ours.shape == ref.shape == (1, Z, 3, H // 8, W // 8)
    assert relative_error(ours, ref) < 1e-5
    frames = pipe(image, PROMPT, generator=torch.Generator().manual_seed(5), output_type="pt", **common,
                  **SIZE).frames
    videos = image_to_video(model, image, PROMPT, seed=5, output_range="0,1", **common, **OURS)
    assert videos.shape == frames.shape == (1, FRAMES, 3, H, W)
    assert relative_error(videos, frames) < 1e-5
    other = image_to_video(model, image, PROMPT, sampler="unipc", return_latents=True, **OURS)
    assert bool(other.isfinite().all()) and torch.equal(other[:, :, :1], ours[:, :, :1])


def test_command_writes_the_library_videos(tiny_replace, tmp_path, capsys):
    """``diffkit video --image`` writes the library's videos: the --individual APNG read back equals the library's
    frames rounded to uint8."""
    from diffkit.images import to_uint8
    from diffkit.video import read_video
    _, path, model = tiny_replace
    _image(2).save(tmp_path / "in.png")
    argv = ["video", "--checkpoint", str(path), "--image", str(tmp_path / "in.png"), "--prompt", PROMPT, "--frames",
            str(FRAMES), "--height", str(H), "--width", str(W), "--steps", str(STEPS), "--guidance-scale", "4.5",
            "--seed", "3", "--no-progress", "--out", str(tmp_path / "x.png"), "--individual", str(tmp_path / "each")]
    assert main(argv) == 0
    assert "15 fps" in capsys.readouterr().out
    videos = image_to_video(model, _image(2), PROMPT, guidance_scale=4.5, seed=3, **OURS)
    assert (to_uint8(read_video(tmp_path / "each" / "video_00000.png")) == to_uint8(videos[0])).all()


@pytest.mark.parametrize("args, message", [
    ([], "image-to-video folder (image-to-video): give --image PNG"),
    (["--frames", "1"], "num_frames=1 is not allowed for image-to-video; give 4 k + 1 >= 5"),
    (["--frames", "6"], "num_frames=6 is not allowed; give 4 k + 1"),
    (["--height", "40"], "height x width 40x1280 is not allowed"),
    (["--negative-prompt", NEGATIVE], "true CFG takes both"),
    (["--lora", "x.safetensors"], "--lora does not apply to a HunyuanVideo image-to-video folder"),
])
def test_command_refusals_are_one_line(tiny_concat, tmp_path, capsys, monkeypatch, args, message):
    """Before any weight is read, nothing written."""
    monkeypatch.chdir(tmp_path)
    _image().save(tmp_path / "in.png")
    image = [] if "give --image" in message else ["--image", "in.png"]
    refused_in_one_line(capsys, tmp_path, "video", tiny_concat[1], image + args, message)


def test_folder_refusals_are_one_line(tiny_concat, tmp_path, capsys):
    """From the folder's JSON alone: diffkit sample on it (naming diffkit video --image); another transformer class,
    an image_condition_type other than the two, channels that do not fit it, a dynamic-shifting scheduler, another
    text encoder class."""
    path = tiny_concat[1]
    refused_in_one_line(capsys, tmp_path, "sample", path, [], f"generate videos with diffkit video --checkpoint {path} "
                        f"--image PNG --prompt TEXT")
    parts = ("model_index.json", "scheduler", "transformer", "text_encoder", "tokenizer", "text_encoder_2",
             "tokenizer_2", "vae", "image_processor")
    for part, change, expected in [
            ("model_index.json", {"transformer": ["diffusers", "WanTransformer3DModel"]},
             "transformer is a 'WanTransformer3DModel'; allowed: HunyuanVideoTransformer3DModel"),
            ("model_index.json", {"text_encoder": ["transformers", "LlamaModel"]}, "LlavaForConditionalGeneration"),
            ("transformer/config.json", {"image_condition_type": None}, "image_condition_type=None; allowed: "),
            ("transformer/config.json", {"image_condition_type": "token_replace"}, "in_channels, out_channels = 9, 4"),
            ("scheduler/scheduler_config.json", {"use_dynamic_shifting": True}, "use_dynamic_shifting")]:
        bad = changed_folder(path, tmp_path, part, change, parts=parts)
        with pytest.raises(DiffkitError, match=re.escape(expected)) as err:
            check_hunyuan_video_i2v_folder(bad)
        assert "\n" not in str(err.value)
