"""A tiny random Qwen-Image folder (tests/test_qwen_image.py): a byte-level BPE ``Qwen2Tokenizer`` of the 256 byte
characters and a few merges, a ``Qwen2_5_VLForConditionalGeneration`` of one text layer (width 32) with a tiny
vision tower (the class builds one), a ``QwenImageTransformer2DModel`` of one block, an ``AutoencoderKLQwenImage``
of two levels (f = 4) and Qwen-Image's ``FlowMatchEulerDiscreteScheduler`` config (dynamic exponential shift,
terminal 0.02), written by save_pretrained (nothing downloaded)."""
from unittest import mock

import torch

import diffusers
import transformers

MERGES = [("h", "o"), ("ho", "t"), ("Ġ", "d"), ("Ġd", "o"), ("Ġdo", "g"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]


def byte_characters() -> list:
    """GPT-2's byte -> unicode map (the byte-level pre-tokenizer's alphabet), in byte order."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept + [256 + i for i in range(len(extra))]]


def tiny_qwen_tokenizer(vision: bool = False):
    """A Qwen2Tokenizer (byte-level BPE) with the chat template's two special tokens (``vision``: and the edit
    template's three vision tokens and the processor's video token); pads on the right."""
    vocab = {c: i for i, c in enumerate(byte_characters())}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=MERGES)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"] + (
        ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"] if vision else [])})
    return tokenizer


def tiny_qwen_vl(width: int = 32, vision: bool = False, layers: int = 1) -> dict:
    """{tokenizer, text_encoder (, processor)} of a tiny random Qwen2.5-VL (module docstring); ``vision``: the
    tokenizer with the vision tokens (the config's ids) and a ``Qwen2VLProcessor`` of the PIL image processor (no
    torchvision) with the vision tower's patches (2 x 2, no merge, one frame). Qwen-Image's and LongCat-Image's
    (tests/test_longcat_image.py); ``layers``: its text layers (HunyuanImage's reads hidden state -3)."""
    tokenizer = tiny_qwen_tokenizer(vision)
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in names] if vision else [len(tokenizer) + i for i in (1, 2, 3, 4)]
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                         rope_parameters={"rope_theta": 10000.0, "rope_type": "default",
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           patch_size=2, spatial_merge_size=1, temporal_patch_size=1, window_size=4,
                           fullatt_block_indexes=[0]),
        image_token_id=ids[0], video_token_id=ids[1], vision_start_token_id=ids[2], vision_end_token_id=ids[3])
    parts = dict(text_encoder=transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer=tokenizer)
    if vision:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        images = Qwen2VLImageProcessorPil(patch_size=2, merge_size=1, temporal_patch_size=1,
                                          size={"shortest_edge": 16, "longest_edge": 64 * 64})
        with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *_: None):
            # (its video_processor class check imports torchvision, not installed here; no video is processed)
            parts["processor"] = transformers.Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer)
    return parts


def tiny_qwen_image_pipeline(width: int = 32, edit: bool = False, plus: bool = False):
    """A QwenImagePipeline of random weights (module docstring); z_dim 4, transformer in_channels 16. ``edit``: a
    QwenImageEditPipeline, its Qwen2.5-VL with the vision tokens and processor (:func:`tiny_qwen_vl`); ``plus``:
    a QwenImageEditPlusPipeline of the same parts."""
    torch.manual_seed(0)
    parts = tiny_qwen_vl(width, edit)
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=width, axes_dims_rope=(4, 6, 6))
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 2.0, 1.2])
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift_terminal=0.02,
        use_dynamic_shifting=True, time_shift_type="exponential")
    parts.update(scheduler=scheduler, vae=vae, transformer=transformer)
    kind = diffusers.QwenImageEditPlusPipeline if plus else diffusers.QwenImageEditPipeline if edit else \
        diffusers.QwenImagePipeline
    pipe = kind(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_qwen_image_edit(pipe, path, processor_class=None) -> None:
    """save_pretrained of a tiny QwenImageEditPipeline (or another pipeline with a ``processor_class`` processor,
    default Qwen2VLProcessor: Qwen-Image 2.1's Qwen3VLProcessor); its processor/ as the image processor's and
    tokenizer's files (the processor's save_pretrained walks its absent video processor)."""
    def save(processor, directory, **_):
        processor.image_processor.save_pretrained(directory)
        processor.tokenizer.save_pretrained(directory)
    with mock.patch.object(processor_class or transformers.Qwen2VLProcessor, "save_pretrained", save):
        pipe.save_pretrained(path)
