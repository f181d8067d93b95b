"""Text conditioning: captions from class labels, a word tokenizer and a small transformer text
encoder whose output sequence is the U-Net's cross-attention ``context`` (Rombach et al. 2022,
Sec. 3.3: tau_theta(y) in R^{M x d_tau}, with Q = W_Q phi(z_t), K = W_K tau(y), V = W_V tau(y)).

* :class:`CaptionSet` - varied captions for each class of a data set ("a photo of a sneaker",
  "an ankle boot, black and white", "the digit seven", "a handwritten 7", ...). The empty
  prompt ``""`` is the null condition of classifier-free guidance (Ho & Salimans 2022).
* :class:`WordTokenizer` - a deterministic word-level vocabulary (``<pad>``, ``<bos>``,
  ``<eos>``, ``<unk>`` then the sorted words of the captions); every prompt is encoded as
  ``<bos> words... <eos>`` padded with ``<pad>`` to ``max_tokens``. Unknown words map to
  ``<unk>`` (:meth:`WordTokenizer.unknown_words` lists them so a caller can warn); a prompt
  longer than ``max_tokens`` is refused. The vocabulary is saved in checkpoint metadata.
* :class:`TextEncoder` - token + learned position embeddings, pre-LN transformer layers
  (``x += MHA(LN(x))``, ``x += MLP(LN(x))``, as CLIP's text tower, Radford et al. 2021) with a
  key-padding mask, a final LayerNorm and a linear map to ``context_dim``. Because padded keys
  are masked, the outputs at the real tokens do not depend on how much padding follows. The
  U-Net cross-attends to the whole padded sequence (as Stable Diffusion attends to all 77 CLIP
  tokens); prompts are always padded to the same ``max_tokens``, so a prompt has one encoding.
* :class:`TextConditionedUNet` - the U-Net and the text encoder as one module, so they are
  trained jointly (one optimiser, one EMA, one checkpoint): ``net(x, t, tokens=ids)`` encodes
  the prompt inside the forward pass (training); ``net(x, t, context=c)`` takes a context
  encoded once (sampling, see :meth:`encode_prompts`).
* :class:`CLIPPromptEncoder` - optionally, a frozen CLIP text encoder from a local directory
  through ``transformers`` (``CLIPTokenizer`` + ``CLIPTextModel.from_pretrained(dir)``); nothing
  is downloaded (``local_files_only=True``).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DiffkitError, check_range, first_line, shorten

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")

# ---------------------------------------------------------------------------- captions
# Caption templates: "{}" is a noun phrase with its article ("a sneaker", "the digit seven").
PHOTO_TEMPLATES = ("{}", "a photo of {}", "a picture of {}", "an image of {}", "{}, black and white",
                   "a black and white photo of {}", "a small picture of {}", "a grayscale image of {}",
                   "a photo of {}, black and white")
DIGIT_TEMPLATES = ("{}", "a picture of {}", "an image of {}", "{}, black and white", "a drawing of {}",
                   "a photo of {}")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Noun phrases per Fashion-MNIST class (label order of diffkit.data.FASHION_MNIST_NAMES).
FASHION_MNIST_PHRASES = (
    ("a t-shirt", "a top", "a t-shirt or top"),
    ("a trouser", "a pair of trousers", "a pair of pants"),
    ("a pullover", "a sweater", "a jumper"),
    ("a dress", "a summer dress"),
    ("a coat", "a jacket"),
    ("a sandal", "a pair of sandals"),
    ("a shirt", "a button-down shirt"),
    ("a sneaker", "a running shoe", "a trainer shoe"),
    ("a bag", "a handbag"),
    ("an ankle boot", "a boot"),
)


def digit_phrases(d: int) -> tuple[str, ...]:
    """Noun phrases of digit ``d``: "the digit seven", "a handwritten 7", ..."""
    word = _NUMBER_WORDS[d]
    return (f"the digit {word}", f"the number {word}", f"a handwritten {d}", f"a handwritten {word}",
            f"the digit {d}", f"a {word}" if word[0] not in "aeiou" else f"an {word}")


def _article(name: str) -> str:
    name = name.lower().replace("/", " or ").replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


@dataclass
class CaptionSet:
    """Captions for each class: every template applied to every phrase of the class.

    ``phrases[k]``: the noun phrases of class k; ``templates``: strings with one ``{}``.
    :meth:`captions` lists class k's captions; :meth:`prompt` is the canonical prompt of class k
    (the second template, e.g. "a photo of a sneaker", applied to the first phrase)."""

    phrases: tuple
    templates: tuple

    def __post_init__(self):
        self.phrases = tuple(tuple(p) for p in self.phrases)
        self.templates = tuple(self.templates)
        if not self.phrases or any(not p for p in self.phrases):
            raise DiffkitError("a caption set needs at least one phrase for every class")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise DiffkitError(f"caption template {bad[0] if bad else ''!r} must contain '{{}}' exactly once")
        self._table = [[t.format(p) for p in ph for t in self.templates] for ph in self.phrases]

    @property
    def num_classes(self) -> int:
        return len(self.phrases)

    @classmethod
    def for_dataset(cls, name: str, class_names: Sequence[str] = ()) -> "CaptionSet":
        """The captions of a named data set (digits/mnist, fashion-mnist; others from class names)."""
        if name in ("digits", "mnist"):
            return cls(tuple(digit_phrases(d) for d in range(10)), DIGIT_TEMPLATES)
        if name == "fashion-mnist":
            return cls(FASHION_MNIST_PHRASES, PHOTO_TEMPLATES)
        if not class_names:
            raise DiffkitError(f"text conditioning on dataset={name!r} needs class names")
        return cls(tuple((_article(str(n)),) for n in class_names), PHOTO_TEMPLATES)

    def captions(self, label: int) -> list[str]:
        return list(self._table[label])

    def prompt(self, label: int) -> str:
        return self.templates[min(1, len(self.templates) - 1)].format(self.phrases[label][0])

    def all_captions(self) -> list[str]:
        return [c for row in self._table for c in row]

    def draw(self, labels: torch.Tensor, u: torch.Tensor) -> list[str]:
        """One caption per label, caption index floor(u * count) with u ~ U[0, 1) given."""
        out = []
        for k, ui in zip(labels.tolist(), u.tolist()):
            row = self._table[int(k)]
            out.append(row[min(int(ui * len(row)), len(row) - 1)])
        return out

    def to_dict(self) -> dict:
        return {"phrases": [list(p) for p in self.phrases], "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, data: dict) -> "CaptionSet":
        return cls(tuple(tuple(p) for p in data["phrases"]), tuple(data["templates"]))


# ---------------------------------------------------------------------------- tokenizer
def split_words(text: str) -> list[str]:
    """Lower-case words (letters/digits, inner ' or -) and single punctuation marks."""
    return _WORD_RE.findall(str(text).lower())


class WordTokenizer:
    """Word-level tokenizer: ids 0..3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``, then the
    vocabulary in the given (sorted, for :meth:`from_texts`) order."""

    def __init__(self, words: Sequence[str], max_tokens: int = 16):
        check_range("max_prompt_tokens", max_tokens, 3, 4096, integer=True)
        words = [w for w in words if w not in SPECIAL_TOKENS]
        if len(set(words)) != len(words):
            raise DiffkitError("a tokenizer vocabulary must not repeat words")
        self.tokens = list(SPECIAL_TOKENS) + list(words)
        self.index = {w: i for i, w in enumerate(self.tokens)}
        self.max_tokens = int(max_tokens)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @classmethod
    def from_texts(cls, texts: Sequence[str], max_tokens: int = 16) -> "WordTokenizer":
        """The sorted set of words in ``texts`` (deterministic: independent of their order)."""
        return cls(sorted({w for t in texts for w in split_words(t)}), max_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in split_words(text) if w not in self.index]

    def encode(self, texts: Sequence[str] | str) -> torch.Tensor:
        """(B, max_tokens) long ids: ``<bos> words <eos> <pad>...``; one-line error if too long."""
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            words = split_words(text)
            if len(words) + 2 > self.max_tokens:
                raise DiffkitError(f"prompt {shorten(text)} has {len(words)} words; allowed: at most "
                                   f"{self.max_tokens - 2} (max_prompt_tokens={self.max_tokens} counts <bos> and "
                                   f"<eos>)")
            ids = [self.bos_id] + [self.index.get(w, self.unk_id) for w in words] + [self.eos_id]
            rows.append(ids + [self.pad_id] * (self.max_tokens - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_tokens)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Back to text: the words between ``<bos>`` and ``<eos>``, joined by spaces (a ','
        attaches to the word before it)."""
        out = []
        for row in torch.as_tensor(ids).reshape(-1, self.max_tokens).tolist():
            words = []
            for i in row:
                if i == self.eos_id or i == self.pad_id:
                    break
                if i != self.bos_id:
                    words.append(self.tokens[i])
            out.append(" ".join(words).replace(" ,", ","))
        return out

    def to_dict(self) -> dict:
        return {"words": self.tokens[len(SPECIAL_TOKENS):], "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, data: dict) -> "WordTokenizer":
        return cls(data["words"], data["max_tokens"])


# ---------------------------------------------------------------------------- encoder
@dataclass
class TextEncoderConfig:
    """vocab_size, width (transformer width), layers, heads, max_tokens (positions), context_dim
    (the output width = the U-Net's cross-attention ``context_dim``)."""

    vocab_size: int
    width: int = 64
    layers: int = 2
    heads: int = 2
    max_tokens: int = 16
    context_dim: int = 64

    def __post_init__(self):
        for name in ("vocab_size", "width", "heads", "max_tokens", "context_dim"):
            check_range(f"text encoder {name}", getattr(self, name), 1, None, integer=True)
        check_range("text encoder layers", self.layers, 0, None, integer=True)
        if self.width % self.heads:
            raise DiffkitError(f"text_heads={self.heads} must divide text_width={self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


class _TextBlock(nn.Module):
    """Pre-LN transformer layer: x += MHA(LN(x)) (padded keys masked); x += MLP(LN(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.proj(attn.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """tau_theta: ids (B, L) -> context (B, L, context_dim). Keys at ``<pad>`` (id 0) are masked
    in every layer, so the outputs at real tokens are those of the unpadded sequence."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = cfg = config
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embed = nn.Parameter(torch.randn(cfg.max_tokens, cfg.width) * 0.01)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(_TextBlock(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.width)
        self.out = nn.Linear(cfg.width, cfg.context_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.config.max_tokens:
            raise DiffkitError(f"token ids of shape {tuple(ids.shape)} are not allowed; expected "
                               f"(batch, <= {self.config.max_tokens})")
        key_mask = ids != 0
        x = self.token_embed(ids) + self.position_embed[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask)
        return self.out(self.final_norm(x))


class TextConditionedUNet(nn.Module):
    """U-Net + text encoder trained as one network.

    ``forward(x, t, tokens=ids)`` encodes the prompt ids with the text encoder and passes the
    sequence as the U-Net's ``context``; ``forward(x, t, context=c)`` uses a context encoded
    beforehand (:meth:`encode_prompts`, once per sampling call). ``config`` is the U-Net's."""

    def __init__(self, unet: nn.Module, text: TextEncoder, tokenizer: WordTokenizer,
                 captions: Optional[CaptionSet] = None):
        super().__init__()
        self.unet, self.text, self.tokenizer, self.captions = unet, text, tokenizer, captions
        if unet.config.context_dim != text.config.context_dim:
            raise DiffkitError(f"the U-Net's context_dim={unet.config.context_dim} differs from the text "
                               f"encoder's {text.config.context_dim}")
        if tokenizer.vocab_size != text.config.vocab_size or tokenizer.max_tokens != text.config.max_tokens:
            raise DiffkitError(f"the tokenizer ({tokenizer.vocab_size} tokens, max {tokenizer.max_tokens}) does not "
                               f"match the text encoder ({text.config.vocab_size}, max {text.config.max_tokens})")
        self._caption_table = None

    def text_meta(self) -> dict:
        """What a checkpoint needs to rebuild the text side: vocabulary, encoder shape, captions."""
        return {"tokenizer": self.tokenizer.to_dict(), "encoder": self.text.config.to_dict(),
                "captions": None if self.captions is None else self.captions.to_dict()}

    @classmethod
    def from_meta(cls, unet: nn.Module, meta: dict) -> "TextConditionedUNet":
        captions = CaptionSet.from_dict(meta["captions"]) if meta.get("captions") else None
        return cls(unet, TextEncoder(TextEncoderConfig(**meta["encoder"])),
                   WordTokenizer.from_dict(meta["tokenizer"]), captions)

    def caption_tokens(self, labels: torch.Tensor, u: torch.Tensor,
                       drop: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids (B, L) of one caption per label: caption floor(u * count) of the label's
        captions (u ~ U[0, 1), drawn by the caller), the empty prompt where ``drop`` is True
        (label dropout for classifier-free guidance, Ho & Salimans 2022, Algorithm 1)."""
        if self.captions is None:
            raise DiffkitError("this text-conditional model has no caption set; pass token ids instead")
        if self._caption_table is None:  # (K, M, L) ids of every caption, M = most captions of a class
            rows = [self.tokenizer.encode(self.captions.captions(k)) for k in range(self.captions.num_classes)]
            most = max(r.shape[0] for r in rows)
            table = torch.full((len(rows), most, self.tokenizer.max_tokens), self.tokenizer.pad_id, dtype=torch.long)
            for k, r in enumerate(rows):
                table[k, : r.shape[0]] = r
            self._caption_table = (table, torch.tensor([r.shape[0] for r in rows]), self.tokenizer.encode([""])[0])
        table, counts, null = self._caption_table
        labels = labels.long().cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= table.shape[0]):
            bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
            raise DiffkitError(f"label {bad} has no captions; allowed: 0..{table.shape[0] - 1}")
        index = torch.minimum((u.cpu() * counts[labels]).long(), counts[labels] - 1)
        ids = table[labels, index]
        if drop is not None:
            ids = torch.where(drop.cpu()[:, None], null.expand_as(ids), ids)
        return ids

    @property
    def config(self):
        return self.unet.config

    def forward(self, x, t, y=None, context=None, tokens=None):
        if tokens is not None:
            if context is not None:
                raise DiffkitError("pass tokens or context, not both")
            context = self.text(tokens.to(x.device))
        return self.unet(x, t, y=y, context=context)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], device=None) -> torch.Tensor:
        """Context (len(prompts), max_tokens, context_dim) of the prompts ("" = the null prompt)."""
        ids = self.tokenizer.encode(list(prompts)).to(device or self.position_device())
        return self.text(ids)

    def position_device(self):
        return self.text.position_embed.device


def check_same_vocabulary(source_words: Sequence[str], captions: CaptionSet, dataset: str, source: str) -> None:
    """A one-line error unless the words of ``captions`` (the vocabulary a new run on ``dataset``
    would build, :meth:`WordTokenizer.from_texts`) are ``source_words``, the vocabulary of the
    text encoder a run starts from (diffkit train --init-from): row i of its token embedding
    belongs to word i, so another vocabulary would read the embeddings of other words, or not fit."""
    words = WordTokenizer.from_texts(captions.all_captions()).tokens[len(SPECIAL_TOKENS):]
    if list(words) != list(source_words):
        other = sorted(set(words) ^ set(source_words))
        raise DiffkitError(f"dataset={dataset!r} gives the captions another vocabulary ({len(words)} words) than the "
                           f"text encoder of {source} ({len(source_words)} words; differing: "
                           f"{', '.join(other[:5]) or 'the order'}{', ...' if len(other) > 5 else ''}); fine-tune a "
                           f"text-conditioned model on a data set with the same captions")


def build_text_model(unet: nn.Module, captions: CaptionSet, *, width: int = 64, layers: int = 2, heads: int = 2,
                     max_tokens: int = 16) -> TextConditionedUNet:
    """U-Net + a new text encoder whose vocabulary is the words of ``captions`` (every caption
    must fit in ``max_tokens``, or a one-line error names the longest)."""
    tokenizer = WordTokenizer.from_texts(captions.all_captions(), max_tokens)
    longest = max(captions.all_captions(), key=lambda c: len(split_words(c)))
    if len(split_words(longest)) + 2 > max_tokens:
        raise DiffkitError(f"max_prompt_tokens={max_tokens} is too small for the caption {longest!r}; allowed: "
                           f">= {len(split_words(longest)) + 2}")
    cfg = TextEncoderConfig(tokenizer.vocab_size, width, layers, heads, tokenizer.max_tokens, unet.config.context_dim)
    return TextConditionedUNet(unet, TextEncoder(cfg), tokenizer, captions)


# ---------------------------------------------------------------------------- CLIP (optional)
class CLIPPromptEncoder:
    """A frozen CLIP text encoder from a local diffusers/transformers directory.

    ``CLIPPromptEncoder(dir)(prompts) -> last_hidden_state (B, max_length, hidden)``, prompts
    padded to ``max_length`` (the tokenizer's ``model_max_length``, 77 for SD) as Stable
    Diffusion does. ``dir`` holds ``config.json`` + weights of a ``CLIPTextModel`` and the
    tokenizer files (``vocab.json``, ``merges.txt``), or the two in ``text_encoder/`` and
    ``tokenizer/`` sub-folders (the diffusers layout). Nothing is downloaded."""

    def __init__(self, directory, device="cpu", max_length: Optional[int] = None, progress: bool = True):
        from pathlib import Path

        from .interop import check_finite_model, library_progress_bars
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise DiffkitError("a CLIP text encoder needs the 'transformers' package") from None
        root = Path(directory)
        if not root.is_dir():
            raise DiffkitError(f"CLIP text encoder directory {str(root)!r} does not exist")
        model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        try:
            with library_progress_bars(progress, ("transformers",)):  # progress=False: no loading bar
                self.tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
                self.model = CLIPTextModel.from_pretrained(str(model_dir), local_files_only=True,
                                                           use_safetensors=True)  # never a pickled .bin
        except (OSError, ValueError) as err:
            raise DiffkitError(f"cannot load a CLIP text encoder from {str(root)!r}: {first_line(err, 160)}") from None
        check_finite_model(self.model, model_dir, "CLIP text encoder")  # NaN / inf weights: one line
        self.model.requires_grad_(False).eval().to(device)
        self.max_length = int(max_length or min(self.tokenizer.model_max_length,
                                                self.model.config.max_position_embeddings))
        self.context_dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.model(ids.to(self.model.device)).last_hidden_state


__all__ = ["CaptionSet", "WordTokenizer", "check_same_vocabulary", "TextEncoderConfig", "TextEncoder",
           "TextConditionedUNet", "CLIPPromptEncoder", "build_text_model", "split_words", "digit_phrases"]
