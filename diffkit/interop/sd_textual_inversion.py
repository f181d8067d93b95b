"""Textual-inversion embeddings added to a loaded Stable Diffusion folder's tokenizer and text encoder.

Textual inversion (Gal et al. 2022, "An Image is Worth One Word", Sec. 4, eq. 2) learns the input
embedding v* of a new pseudo-word S* with the text encoder and UNet frozen; using it is adding S* to the
tokenizer and v* as its row of the text encoder's token-embedding table, as diffusers'
``pipe.load_textual_inversion(file, token=...)`` does. Two file layouts, as real files come:

* diffusers (``learned_embeds.safetensors`` / ``.bin``, diffusers' ``textual_inversion.py``): one entry
  ``{token: tensor}``;
* A1111 (``.pt``): ``{"string_to_param": {"*": tensor}, "name": token, ...}``;

* SD-XL (A1111, civitai): ``{"clip_l": tensor, "clip_g": tensor}``, one embedding per text encoder
  (``clip_l`` for ``text_encoder``, ``clip_g`` for ``text_encoder_2``), as diffusers loads it with two
  ``load_textual_inversion`` calls, the same token to each tokenizer; it names no token;

a bare tensor file and an SD-XL file need an explicit token. A tensor of shape (d,) or (1, d) is one vector; (n, d) is a
multi-vector embedding: the tokens ``S*``, ``S*_1``, ..., ``S*_{n-1}`` are added, and a prompt holding S*
gets it expanded to ``"S* S*_1 ... S*_{n-1}"`` before tokenizing (diffusers' ``maybe_convert_prompt``; the
negative prompt too). An explicit token replaces the file's own. Pickles are read with
``torch.load(weights_only=True)``: no code runs. Refused with a one-line error naming the file: a
one-tensor file on an SD-XL folder (or an SD-XL file on a folder with one text encoder), ``clip_l`` and
``clip_g`` of different vector counts, a file that is none of the above, a tensor that is not a finite
(d,) / (n, d) float tensor, an embedding width that is not the text encoder's, a token (or an expanded
one) already in the vocabulary or given twice. Files are read and checked before the folder loads and
matched to it before anything changes, so a failure leaves the tokenizer(s) and text encoder(s) as they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import DiffkitError
from . import load_weights_pickle

FLAG = "--textual-inversion"
XL_KEYS = ("clip_l", "clip_g")  # SD-XL files: text_encoder's, text_encoder_2's embedding


@dataclass(frozen=True)
class Embedding:
    """One file's pseudo-word: ``token`` and its (n, d) ``vectors`` (row i is the token ``tokens[i]``)."""

    path: Path
    token: str
    vectors: torch.Tensor
    vectors_2: Optional[torch.Tensor] = None  # SD-XL: (n, d_2) for text_encoder_2 (clip_g); vectors is clip_l

    @property
    def tokens(self) -> list:
        """S*, S*_1, ..., S*_{n-1} (diffusers' ``_extend_tokens_and_embeddings``)."""
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.vectors.shape[0])]


def _load(path: Path):
    """The object a textual-inversion file holds (safetensors by suffix, else a weights-only pickle)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise DiffkitError(f"{FLAG} {path} is not a safetensors file ({str(err).splitlines()[0][:80]})") from None
    return load_weights_pickle(path, FLAG)


def read_textual_inversion(path, token=None) -> Embedding:
    """The :class:`Embedding` of one file (module doc); ``token`` replaces the file's own."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"{FLAG} {path} {'is not a regular file' if path.exists() else 'does not exist'}")
    obj = _load(path)
    second = None
    if isinstance(obj, torch.Tensor):
        own, vectors = None, obj
    elif isinstance(obj, dict) and set(obj) == set(XL_KEYS):  # SD-XL: one tensor per text encoder
        own, vectors, second = None, obj["clip_l"], obj["clip_g"]
    elif isinstance(obj, dict) and "string_to_param" in obj:  # A1111
        params = obj["string_to_param"]
        if not isinstance(params, dict) or "*" not in params:
            raise DiffkitError(f"{FLAG} {path}: string_to_param has no '*' entry; allowed: A1111 files "
                               f"{{'string_to_param': {{'*': tensor}}, 'name': TOKEN}}")
        own, vectors = obj.get("name"), params["*"]
    elif isinstance(obj, dict) and len(obj) == 1:  # diffusers
        own, vectors = next(iter(obj.items()))
    else:
        what = f"a dict with {len(obj)} entries" if isinstance(obj, dict) else type(obj).__name__
        raise DiffkitError(f"{FLAG} {path} holds {what}; allowed: one {{token: tensor}} entry (diffusers), "
                           f"{{'string_to_param': {{'*': tensor}}, 'name': ...}} (A1111) or {{'clip_l': tensor, "
                           f"'clip_g': tensor}} (SD-XL)")
    token = own if token is None else token
    if token is None:
        raise DiffkitError(f"{FLAG} {path} names no token; give {FLAG} {path}:TOKEN")
    if not isinstance(token, str) or not token or token != "".join(token.split()):
        raise DiffkitError(f"{FLAG} {path}: token {token!r} is not allowed; give one word without spaces "
                           f"({FLAG} {path}:TOKEN)")
    vectors = _vectors(path, token, vectors, "" if second is None else "clip_l ")
    if second is not None:
        second = _vectors(path, token, second, "clip_g ")
        if second.shape[0] != vectors.shape[0]:
            raise DiffkitError(f"{FLAG} {path}: clip_l holds {vectors.shape[0]} vectors and clip_g "
                               f"{second.shape[0]}; allowed: the same number (one per token of {token})")
    return Embedding(path, token, vectors, second)


def _vectors(path, token, vectors, what: str) -> torch.Tensor:
    """``vectors`` as a (n, d) float32 tensor; a one-line error if it is not a finite (d,) / (n, d) float tensor."""
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() or vectors.ndim not in (1, 2) \
            or 0 in vectors.shape:
        found = f"a tensor of shape {tuple(vectors.shape)} ({vectors.dtype})" if isinstance(vectors, torch.Tensor) \
            else type(vectors).__name__
        raise DiffkitError(f"{FLAG} {path}: the {what}embedding of {token} is {found}; allowed: a float tensor of "
                           f"shape (d,) or (n, d)")
    if not torch.isfinite(vectors).all():
        raise DiffkitError(f"{FLAG} {path}: the {what}embedding of {token} holds non-finite values")
    return vectors.detach().reshape(-1, vectors.shape[-1]).float()


def read_textual_inversions(files) -> list:
    """[:class:`Embedding`] of ``files`` (paths or (path, token or None) pairs), every file read and
    checked, and no token (expanded ones included) given twice, before a folder loads."""
    out, seen = [], {}
    for item in files:
        path, token = (item, None) if isinstance(item, (str, Path)) else item
        emb = read_textual_inversion(path, token)
        for t in emb.tokens:
            if t in seen:
                raise DiffkitError(f"{FLAG} {emb.path}: token {t} is also {seen[t]}'s; give each file its own "
                                   f"token ({FLAG} FILE:TOKEN)")
            seen[t] = emb.path
        out.append(emb)
    return out


def add_textual_inversions(sd, embeddings: list, xl: Optional[bool] = None) -> None:
    """Add ``embeddings`` (:func:`read_textual_inversions`) to ``sd``'s tokenizer and text encoder in
    place, as diffusers' ``load_textual_inversion``: each token appended to the tokenizer in order, its
    vector written to the token id's row of the input embeddings; an SD-XL folder gets ``clip_l`` in
    ``tokenizer`` / ``text_encoder`` and ``clip_g`` in ``tokenizer_2`` / ``text_encoder_2``, the same tokens.
    ``xl``: whether ``sd`` takes SD-XL files (default: it has a ``text_encoder_2``; a FLUX.1 folder's is T5,
    which ``FluxPipeline.load_textual_inversion`` leaves alone: False). ``sd.prompt_expansions`` gets each
    multi-vector token's expansion. Everything is checked before anything changes."""
    if not embeddings:
        return
    xl = getattr(sd, "text_encoder_2", None) is not None if xl is None else xl
    for emb in embeddings:
        if xl and emb.vectors_2 is None:
            raise DiffkitError(f"{FLAG} {emb.path} holds one embedding (a Stable Diffusion 1.x/2.x file); an SD-XL "
                               f"folder needs a file with a clip_l and a clip_g tensor (one per text encoder)")
        if not xl and emb.vectors_2 is not None:
            raise DiffkitError(f"{FLAG} {emb.path} is an SD-XL embedding (clip_l and clip_g); this folder has one "
                               f"text encoder that takes embeddings (CLIP): use the file with an SD-XL folder")
    encoders = [(sd.tokenizer, sd.text_encoder, "text_encoder", lambda e: e.vectors)]
    if xl:
        encoders.append((sd.tokenizer_2, sd.text_encoder_2, "text_encoder_2", lambda e: e.vectors_2))
    for tokenizer, encoder, name, vectors_of in encoders:
        _check(tokenizer, encoder, name if xl else "this text encoder", embeddings, vectors_of)
    for tokenizer, encoder, _, vectors_of in encoders:
        _add(tokenizer, encoder, embeddings, vectors_of)
    sd.prompt_expansions.update({e.token: " ".join(e.tokens) for e in embeddings if len(e.tokens) > 1})


def _check(tokenizer, encoder, name: str, embeddings: list, vectors_of) -> None:
    """One-line errors for an embedding width that is not ``encoder``'s or a token ``tokenizer`` has."""
    width, vocab = encoder.get_input_embeddings().weight.shape[1], tokenizer.get_vocab()
    for emb in embeddings:
        vectors = vectors_of(emb)
        if vectors.shape[1] != width:
            what = "" if emb.vectors_2 is None else "clip_l " if vectors is emb.vectors else "clip_g "
            raise DiffkitError(f"{FLAG} {emb.path}: the {what}embedding of {emb.token} has width {vectors.shape[1]}; "
                               f"{name}'s token embeddings have width {width}")
        taken = next((t for t in emb.tokens if t in vocab), None)
        if taken is not None:
            raise DiffkitError(f"{FLAG} {emb.path}: token {taken} is already in the tokenizer's vocabulary; give "
                               f"another ({FLAG} {emb.path}:TOKEN)")


def _add(tokenizer, encoder, embeddings: list, vectors_of) -> None:
    """Append the tokens to ``tokenizer`` and their vectors to ``encoder``'s token-embedding rows."""
    table = encoder.get_input_embeddings()
    old = table.weight
    width = old.shape[1]
    ids = []
    for emb in embeddings:
        for t in emb.tokens:
            tokenizer.add_tokens(t)
            ids.append(tokenizer.convert_tokens_to_ids(t))
    rows = max(old.shape[0], max(ids) + 1)
    weight = torch.cat([old.detach(), old.new_zeros(rows - old.shape[0], width)])
    weight[torch.tensor(ids, device=weight.device)] = torch.cat([vectors_of(e) for e in embeddings]).to(weight)
    weight = torch.nn.Parameter(weight, requires_grad=False)
    for module in encoder.modules():  # the table and every module tied to it (T5's shared and encoder.embed_tokens)
        if isinstance(module, torch.nn.Embedding) and module.weight is old:
            module.weight, module.num_embeddings = weight, rows
    encoder.config.vocab_size = rows


def expand_prompt(prompt: str, tokenizer, expansions: dict) -> str:
    """``prompt`` with each multi-vector token S* it holds written ``"S* S*_1 ... S*_{n-1}"`` (diffusers'
    ``_maybe_convert_prompt``: a token the tokenizer finds in the prompt is replaced as a substring)."""
    if not expansions:
        return prompt
    found = set(tokenizer.tokenize(prompt))
    for token, expansion in expansions.items():
        if token in found:
            prompt = prompt.replace(token, expansion)
    return prompt


__all__ = ["Embedding", "read_textual_inversion", "read_textual_inversions", "add_textual_inversions",
           "expand_prompt"]
