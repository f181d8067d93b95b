"""Prompt-encoding options of Stable Diffusion and SD-XL folders: ``clip_skip``, and SD-XL's ``prompt_2`` /
``negative_prompt_2``, as diffusers 0.42's pipelines read them (``encode_prompt``).

``clip_skip`` N takes the cross-attention context N layers below the one the pipeline takes by default (the
"CLIP skip" N + 1 of A1111-style tools: their 2 is diffusers' 1):

* SD 1.x/2.x (``StableDiffusionPipeline.encode_prompt``, and the LCM, ControlNet, img2img and inpainting pipelines'
  copies of it): the text encoder's ``hidden_states[-(N + 1)]``, then its ``final_layer_norm`` (the default, the
  last hidden state, is that norm of ``hidden_states[-1]``);
* SD-XL (``StableDiffusionXLPipeline.encode_prompt``): ``hidden_states[-(N + 2)]`` of both encoders, with no norm
  (the default is already the penultimate, un-normalised layer); the pooled embedding stays encoder 2's final
  output.

As in the pipelines, ``clip_skip`` changes the prompts' embeddings only: the null half (the empty or negative
prompt) is encoded as by default. N = 0 is the default context. Allowed: an integer 0 <= N < the encoder's layer
count (SD-XL: the smaller of the two encoders'), so at least one transformer layer is used (diffusers would also
take N = layers on SD 1.x/2.x: the token embeddings alone).

``prompt_2`` / ``negative_prompt_2`` (SD-XL): the text of ``tokenizer_2`` / ``text_encoder_2``, so of the pooled
embedding too; ``None`` or ``""`` is the first prompt's (the pipeline's ``prompt_2 or prompt``), one string serves
every prompt, a list gives one per prompt. A folder with one text encoder refuses them. Textual-inversion tokens are
expanded for each tokenizer in its own prompt (the pipeline's ``maybe_convert_prompt``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError


def check_clip_skip(clip_skip, layer_counts: Sequence[int]) -> Optional[int]:
    """``clip_skip`` if it is None or an integer 0 <= N < the fewest of the text encoders' ``layer_counts``; else a
    one-line error."""
    if clip_skip is None:
        return None
    layers = min(layer_counts) if layer_counts else None  # (none known yet: the loaded encoders are checked later)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0 or (
            layers is not None and clip_skip >= layers):
        whose = "the text encoders'" if len(layer_counts) > 1 else "the text encoder's"
        bound = "" if layers is None else f" < {layers} ({whose} {layers} layers; 0 = the default)"
        raise DiffkitError(f"clip_skip={clip_skip!r} is not allowed; give an integer 0 <= clip_skip{bound}")
    return clip_skip


def layer_counts(encoders: Sequence) -> list:
    """The ``num_hidden_layers`` of loaded text encoders."""
    return [int(encoder.config.num_hidden_layers) for encoder in encoders]


def folder_layer_counts(directory) -> list:
    """The ``num_hidden_layers`` of a folder's ``text_encoder`` (and ``text_encoder_2``) configs, read before any
    weight loads (a config that is missing or says nothing: left out, the loaded encoders are checked later)."""
    from pathlib import Path
    from ..errors import read_json_object
    counts = []
    for name in ("text_encoder", "text_encoder_2"):
        config = Path(directory) / name / "config.json"
        layers = read_json_object(config, f"{name} config").get("num_hidden_layers") if config.is_file() else None
        if isinstance(layers, int) and not isinstance(layers, bool):
            counts.append(layers)
    return counts


def skipped_last_states(encoder, input_ids: torch.Tensor, attention_mask, clip_skip: int) -> torch.Tensor:
    """SD 1.x/2.x's context with ``clip_skip`` N: ``final_layer_norm(hidden_states[-(N + 1)])``
    (``StableDiffusionPipeline.encode_prompt``). The norm is ``text_model.final_layer_norm`` (transformers 4, where
    the pipeline looks for it) or the encoder's own ``final_layer_norm`` (transformers 5's flattened CLIPTextModel,
    which diffusers 0.42.1's pipeline does not find: an AttributeError there)."""
    inner = getattr(encoder, "text_model", encoder)
    norm = getattr(inner, "final_layer_norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise DiffkitError(f"clip_skip={clip_skip!r} needs a CLIP text encoder (with a final_layer_norm); this "
                           f"folder's is a {type(encoder).__name__}")
    with torch.no_grad():
        states = encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return norm(states[-(clip_skip + 1)])


def xl_layer(clip_skip: Optional[int]) -> int:
    """The hidden-states index of SD-XL's context: -2 (the penultimate layer), -(N + 2) with ``clip_skip`` N."""
    return -2 - (clip_skip or 0)


def second_prompts(prompt_2: Union[None, str, Sequence[str]], first: list, name: str = "prompt_2") -> list:
    """The texts of SD-XL's second encoder for the prompts ``first``: ``first`` for None or ``""``, one string for
    every prompt, or a list of one per prompt."""
    if prompt_2 is None or (isinstance(prompt_2, str) and not prompt_2):
        return first
    if isinstance(prompt_2, str):
        return [prompt_2] * len(first)
    texts = list(prompt_2)
    if len(texts) != len(first) or not all(isinstance(t, str) for t in texts):
        raise DiffkitError(f"{name} has {len(texts)} entries for {len(first)} prompts; give one string, or a list of "
                           f"one string per prompt")
    return texts


def refuse_second_prompts(prompt_2, negative_prompt_2) -> None:
    """A one-line error for ``prompt_2`` / ``negative_prompt_2`` on a folder with one text encoder."""
    for name, value in (("prompt_2", prompt_2), ("negative_prompt_2", negative_prompt_2)):
        if value is not None:
            raise DiffkitError(f"{name}={value!r} is not allowed: it is the text of SD-XL's second text encoder, and "
                               f"this Stable Diffusion folder has one text encoder")


__all__ = ["check_clip_skip", "layer_counts", "folder_layer_counts", "skipped_last_states", "xl_layer",
           "second_prompts", "refuse_second_prompts"]
