"""A tiny random KolorsPipeline folder for the tests (diffkit.interop.kolors), nothing downloaded.

ChatGLMTokenizer (diffusers.pipelines.kolors.tokenizer) reads a sentencepiece model through the ``sentencepiece``
package (the ``diffusers`` extra's). Where it is installed, :func:`tiny_chatglm` trains a real tiny sentencepiece model
(``SentencePieceTrainer.train``: unigram, about 50 pieces, on a few lines of :data:`WORDS`, in memory) and the folder's
``tokenizer/tokenizer.model`` is that model. Where it is not, :func:`stub_sentencepiece` puts a stand-in
``sentencepiece`` module in ``sys.modules`` while tokenizers are built or loaded: a whole-word processor over a tiny
JSON vocabulary (ids 0-2 <unk> <s> </s>, then "▁word" pieces), with the SentencePieceProcessor methods that
SPTokenizer calls; only the sub-word split is then the stand-in's. Either way ChatGLMTokenizer's own code (the [gMASK]
sop prefix, left padding to 256 tokens, attention mask and position ids) runs as it is, for the pipeline and for
diffkit alike, and the suite passes with or without the package.
"""
import contextlib
import importlib.util
import io
import json
import sys
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

WORDS = ("a", "photo", "of", "cat", "dog", "hot", "ugly", "red", "blue", "sky")
CORPUS_WORDS = WORDS + ("blurry", "watercolour", "green", "house", "tree", "river", "mountain", "night", "light",
                        "painting", "portrait", "zebra", "snow", "fox")  # a real model's training text: ~50 pieces
SENTENCEPIECE = importlib.util.find_spec("sentencepiece") is not None  # the real package (else the stand-in)


class _Processor:
    """SentencePieceProcessor's methods SPTokenizer uses, over a JSON list of pieces (``model_file``)."""

    def __init__(self, model_file):
        with open(model_file, encoding="utf-8") as f:
            self.pieces = json.load(f)["pieces"]
        self.ids = {piece: i for i, piece in enumerate(self.pieces)}

    def vocab_size(self):
        return len(self.pieces)

    get_piece_size = vocab_size

    def unk_id(self):
        return 0

    def bos_id(self):
        return 1

    def eos_id(self):
        return 2

    def EncodeAsPieces(self, text):
        return ["\u2581" + word for word in text.split()]

    def encode(self, text):
        return [self.PieceToId(piece) for piece in self.EncodeAsPieces(text)]

    def PieceToId(self, piece):
        return self.ids.get(piece, 0)

    def IdToPiece(self, index):
        return self.pieces[index]

    def DecodePieces(self, pieces):
        return "".join(pieces).replace("\u2581", " ").strip()

    def decode(self, ids):
        return self.DecodePieces([self.pieces[i] for i in ids])


@contextlib.contextmanager
def stub_sentencepiece():
    """The stand-in ``sentencepiece`` (module docstring) while building or loading a ChatGLMTokenizer; nothing where
    the real package is installed (:data:`SENTENCEPIECE`)."""
    if SENTENCEPIECE:
        yield
        return
    from diffusers.pipelines.kolors import tokenizer as module
    stub = types.ModuleType("sentencepiece")
    stub.SentencePieceProcessor = _Processor
    saved, available = sys.modules.get("sentencepiece"), module.is_sentencepiece_available
    sys.modules["sentencepiece"], module.is_sentencepiece_available = stub, lambda: True
    try:
        yield
    finally:
        module.is_sentencepiece_available = available
        if saved is None:
            sys.modules.pop("sentencepiece", None)
        else:
            sys.modules["sentencepiece"] = saved


def tiny_sentencepiece_model() -> bytes:
    """A real unigram sentencepiece model (ids 0-2 <unk> <s> </s>, about 50 pieces) trained in memory on the
    rotations of :data:`CORPUS_WORDS` (one thread: the same bytes every time)."""
    import sentencepiece
    words = list(CORPUS_WORDS)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words[i:] + words[:i]) for i in range(len(words))), model_writer=model,
        vocab_size=64, hard_vocab_limit=False, model_type="unigram", num_threads=1, minloglevel=2)
    return model.getvalue()


def tiny_chatglm(root, hidden_size=32):
    """(ChatGLMModel, ChatGLMTokenizer): 2 layers of width ``hidden_size``, multi-query attention (2 groups), rotary
    positions for 256 tokens; the tokenizer's model written into ``root``: a real sentencepiece model
    (:func:`tiny_sentencepiece_model`) where the package is installed, else the stand-in's vocabulary of
    :data:`WORDS` (inside :func:`stub_sentencepiece`)."""
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig
    vocab = root / "tiny_chatglm.model"
    if SENTENCEPIECE:
        vocab.write_bytes(tiny_sentencepiece_model())
    else:
        vocab.write_text(json.dumps({"pieces": ["<unk>", "<s>", "</s>"] + ["\u2581" + w for w in WORDS]}))
    with stub_sentencepiece():
        tokenizer = ChatGLMTokenizer(str(vocab))
    torch.manual_seed(2)
    config = ChatGLMConfig(num_layers=2, padded_vocab_size=tokenizer.vocab_size, hidden_size=hidden_size,
                           ffn_hidden_size=37, kv_channels=8, num_attention_heads=4, seq_length=256,
                           multi_query_attention=True, multi_query_group_num=2, original_rope=True,
                           torch_dtype="float32")
    model = ChatGLMModel(config, empty_init=False).eval()
    for name, weight in model.named_parameters():  # RMSNorm's weights are torch.empty (ChatGLM's own init)
        if name.endswith("layernorm.weight"):
            weight.data = 1 + 0.1 * torch.randn_like(weight)
    return model, tokenizer


def tiny_kolors_unet(context_dim=32, cross_attention_dim=24, in_channels=4):
    """A tiny random Kolors UNet: SD-XL's (addition_embed_type "text_time", 6 time ids x 8 + the pooled width) with
    ``encoder_hid_proj`` from the ChatGLM width to ``cross_attention_dim`` (encoder_hid_dim_type "text_proj")."""
    torch.manual_seed(3)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8, norm_num_groups=8, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + context_dim, cross_attention_dim=cross_attention_dim,
        encoder_hid_dim=context_dim, encoder_hid_dim_type="text_proj")


def kolors_scheduler():
    """Kolors' EulerDiscreteScheduler (Kwai-Kolors/Kolors-diffusers: 1100 scaled-linear betas to 0.014, leading
    spacing, steps_offset 1)."""
    return diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.014, beta_schedule="scaled_linear",
                                            num_train_timesteps=1100, timestep_spacing="leading", steps_offset=1,
                                            interpolation_type="linear", use_karras_sigmas=False)


def tiny_kolors_pipeline(root):
    """A tiny random KolorsPipeline (no progress bar): :func:`tiny_chatglm`, :func:`tiny_kolors_unet`, a 2-level
    VAE (latents 8 x 8 for 16 x 16 images, SD-XL's scaling factor 0.13025), :func:`kolors_scheduler`."""
    text_encoder, tokenizer = tiny_chatglm(root)
    unet = tiny_kolors_unet()
    torch.manual_seed(4)
    vae = diffusers.AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=8, sample_size=16, scaling_factor=0.13025)
    from diffusers.pipelines.kolors import KolorsPipeline  # (diffusers.KolorsPipeline: a dummy without sentencepiece)
    pipe = KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                    scheduler=kolors_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
