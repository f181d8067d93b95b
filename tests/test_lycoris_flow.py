"""LyCORIS files on the flow-transformer folders whose diffusers 0.42.1 loaders load LoRA only (FLUX.1, Chroma,
HiDream-I1, Qwen-Image, Sana, SD3, Lumina-Image 2.0, AuraFlow, CogView4): one line naming the key, the kind and the
loader (diffkit.interop.lycoris_flow.refuse_lycoris), before any folder is read. Z-Image's and FLUX.2's LoKr files:
tests/test_z_image.py, tests/test_flux2.py."""
from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from diffkit.errors import DiffkitError
from diffkit.interop.flux import read_flux_loras
from diffkit.interop.hidream_lora import read_hidream_loras
from diffkit.interop.qwen_image_lora import read_qwen_image_loras
from diffkit.interop.sana_lora import read_sana_loras, read_transformer_loras
from diffkit.interop.sd3_lora import read_sd3_loras

READERS = {"FluxPipeline": read_flux_loras, "ChromaPipeline": partial(read_flux_loras, kind="Chroma"),
           "HiDreamImagePipeline": read_hidream_loras, "QwenImagePipeline": read_qwen_image_loras,
           "SanaPipeline": read_sana_loras, "StableDiffusion3Pipeline": read_sd3_loras,
           "Lumina2Pipeline": partial(read_transformer_loras, kind="Lumina2", folder="a Lumina-Image 2.0 folder",
                                      pipeline="Lumina2Pipeline"),
           "AuraFlowPipeline": partial(read_transformer_loras, kind="AuraFlow", folder="an AuraFlow folder",
                                       pipeline="AuraFlowPipeline", flux_check=False),
           "CogView4Pipeline": partial(read_transformer_loras, kind="CogView4", folder="a CogView4 folder",
                                       pipeline="CogView4Pipeline")}
FILES = {"LoKr": {"transformer.x_embedder.lokr_w1": torch.ones(4, 4),
                  "transformer.x_embedder.lokr_w2": torch.ones(8, 4)},
         "LoHa": {"lora_unet_x_embedder.hada_w1_a": torch.ones(32, 2),
                  "lora_unet_x_embedder.hada_w1_b": torch.ones(2, 16)},
         "LyCORIS": {"lycoris_transformer_blocks_0_attn_to_q.lokr_w1": torch.ones(4, 4)}}


@pytest.mark.parametrize("pipeline", sorted(READERS))
def test_lycoris_files_are_refused_where_diffusers_loads_lora_only(tmp_path, pipeline):
    """A peft-named LoKr, a kohya LoHa and a LyCORIS-named file: the first key named, before any folder is read."""
    for kind, tensors in FILES.items():
        save_file(tensors, tmp_path / f"{kind}.safetensors")
        with pytest.raises(DiffkitError) as caught:
            READERS[pipeline]([tmp_path / f"{kind}.safetensors"])
        message = str(caught.value)
        assert f"key {min(tensors)!r} is a LyCORIS {'LoHa' if kind == 'LoHa' else 'LoKr'} tensor; diffusers " \
               f"0.42.1's {pipeline}.load_lora_weights loads LoRA files only (diffusers converts LoKr files for " \
               f"Z-Image and FLUX.2 folders alone, LoHa files for none)" in message, message
        assert "\n" not in message


def test_lokr_files_with_peft_metadata_are_refused_on_flux2_and_z_image(tmp_path):
    """A LoKr file carrying lora_adapter_metadata (diffusers' LoKrConfig source): one line, on both readers."""
    import json
    from diffkit.interop.flux2_lora import read_flux2_loras
    from diffkit.interop.z_image_lora import read_z_image_loras
    tensors = {"transformer.x_embedder.lokr_w1": torch.ones(4, 4), "transformer.x_embedder.lokr_w2": torch.ones(8, 4)}
    save_file(tensors, tmp_path / "meta.safetensors", metadata={"lora_adapter_metadata": json.dumps({"r": 2})})
    for read in (read_flux2_loras, read_z_image_loras):
        with pytest.raises(DiffkitError, match="is a LoKr file with lora_adapter_metadata, from which diffusers"):
            read([tmp_path / "meta.safetensors"])
