"""A diffusers UNet2DConditionModel's layers under their original LDM / SGM names (Rombach et al. 2022's
``ldm/modules/diffusionmodules/openaimodel.py``, Stability's ``sgm`` repository for SD-XL).

kohya's sd-scripts trains SD-XL LoRAs on that UNet (``sdxl_original_unet.py``), so SD-XL kohya files name
its modules: ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`` is diffusers'
``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``. The map follows openaimodel's layout
rather than diffusers' string heuristics (``_maybe_map_sgm_blocks_to_diffusers``): ``input_blocks.0.0``
is ``conv_in``; then each down block's layers in order, one ``input_blocks.i`` per resnet (``.0``, its
attention ``.1``) and one for its downsampler (``.0.op``); ``middle_block`` 0 / 1 / 2 is resnet 0 /
attention / resnet 1; each up block's layers are ``output_blocks.i`` with the resnet at ``.0``, the
attention at ``.1`` and, on the block's last layer, the upsampler next (``.2`` after an attention,
else ``.1``; its ``.conv``); ``out.2`` is ``conv_out``, ``time_embed.0`` / ``.2`` the time MLP and
``label_emb.0.0`` / ``.0.2`` SD-XL's added-condition MLP. Inside a resnet ``in_layers.2`` is ``conv1``,
``emb_layers.1`` ``time_emb_proj``, ``out_layers.3`` ``conv2``, ``skip_connection`` ``conv_shortcut``;
inside an attention block the names are diffusers' own.
"""
from __future__ import annotations

TOP = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
       "add_embedding.linear_2": "label_emb.0.2"}
RESNET = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
          "conv_shortcut": "skip_connection"}


def _blocks(unet) -> dict:
    """{diffusers prefix of a resnet / attention / sampler: its LDM prefix}."""
    out, i = {}, 1
    for b, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            out[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            out[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
            i += 1
        if getattr(block, "downsamplers", None):
            out[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{i}.0.op"
            i += 1
    mid = getattr(unet, "mid_block", None)
    for j in range(len(getattr(mid, "resnets", ()))):
        out[f"mid_block.resnets.{j}"] = f"middle_block.{2 * j}"
        out[f"mid_block.attentions.{j}"] = f"middle_block.{2 * j + 1}"
    i = 0
    for b, block in enumerate(unet.up_blocks):
        attention = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            out[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{i}.0"
            out[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{i}.1"
            i += 1
        if getattr(block, "upsamplers", None):
            out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{i - 1}.{2 if attention else 1}.conv"
    return out


def ldm_names(unet, names) -> dict:
    """{diffusers layer name: its LDM / SGM name} for each of ``names`` (layers of ``unet``) that has one."""
    blocks, out = _blocks(unet), {}
    for name in names:
        if name in TOP or name in blocks:
            out[name] = TOP.get(name) or blocks[name]
            continue
        head, _, leaf = name.rpartition(".")
        if ".resnets." in head and head in blocks and leaf in RESNET:
            out[name] = f"{blocks[head]}.{RESNET[leaf]}"
            continue
        parts = name.split(".")
        for cut in (4, 3):  # down_blocks.b.attentions.j.<rest> / mid_block.attentions.j.<rest>
            head, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
            if ".attentions." in head and head in blocks and rest:
                out[name] = f"{blocks[head]}.{rest}"
                break
    return out


__all__ = ["ldm_names"]
