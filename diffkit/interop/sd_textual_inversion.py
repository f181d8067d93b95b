"""Textual-inversion embeddings added to a loaded Stable Diffusion folder's tokenizer and text encoder.

Textual inversion (Gal et al. 2022, "An Image is Worth One Word", Sec. 4, eq. 2) learns the input
embedding v* of a new pseudo-word S* with the text encoder and UNet frozen; using it is adding S* to the
tokenizer and v* as its row of the text encoder's token-embedding table, as diffusers'
``pipe.load_textual_inversion(file, token=...)`` does. Two file layouts, as real files come:

* diffusers (``learned_embeds.safetensors`` / ``.bin``, diffusers' ``textual_inversion.py``): one entry
  ``{token: tensor}``;
* A1111 (``.pt``): ``{"string_to_param": {"*": tensor}, "name": token, ...}``;

a bare tensor file needs an explicit token. A tensor of shape (d,) or (1, d) is one vector; (n, d) is a
multi-vector embedding: the tokens ``S*``, ``S*_1``, ..., ``S*_{n-1}`` are added, and a prompt holding S*
gets it expanded to ``"S* S*_1 ... S*_{n-1}"`` before tokenizing (diffusers' ``maybe_convert_prompt``; the
negative prompt too). An explicit token replaces the file's own. Pickles are read with
``torch.load(weights_only=True)``: no code runs. Refused with a one-line error naming the file: a file
that is none of the above, a tensor that is not a finite (d,) / (n, d) float tensor, an embedding width
that is not the text encoder's, a token (or an expanded one) already in the vocabulary or given twice.
Files are read and checked before the folder loads and matched to it before anything changes, so a
failure leaves the tokenizer and text encoder as they were.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffkitError
from . import load_weights_pickle

FLAG = "--textual-inversion"


@dataclass(frozen=True)
class Embedding:
    """One file's pseudo-word: ``token`` and its (n, d) ``vectors`` (row i is the token ``tokens[i]``)."""

    path: Path
    token: str
    vectors: torch.Tensor

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
    if isinstance(obj, torch.Tensor):
        own, vectors = None, obj
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
        raise DiffkitError(f"{FLAG} {path} holds {what}; allowed: one {{token: tensor}} entry (diffusers) or "
                           f"{{'string_to_param': {{'*': tensor}}, 'name': ...}} (A1111)")
    token = own if token is None else token
    if token is None:
        raise DiffkitError(f"{FLAG} {path} names no token; give {FLAG} {path}:TOKEN")
    if not isinstance(token, str) or not token or token != "".join(token.split()):
        raise DiffkitError(f"{FLAG} {path}: token {token!r} is not allowed; give one word without spaces "
                           f"({FLAG} {path}:TOKEN)")
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() or vectors.ndim not in (1, 2) \
            or 0 in vectors.shape:
        what = f"a tensor of shape {tuple(vectors.shape)} ({vectors.dtype})" if isinstance(vectors, torch.Tensor) \
            else type(vectors).__name__
        raise DiffkitError(f"{FLAG} {path}: the embedding of {token} is {what}; allowed: a float tensor of shape "
                           f"(d,) or (n, d)")
    if not torch.isfinite(vectors).all():
        raise DiffkitError(f"{FLAG} {path}: the embedding of {token} holds non-finite values")
    return Embedding(path, token, vectors.detach().reshape(-1, vectors.shape[-1]).float())


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


def add_textual_inversions(sd, embeddings: list) -> None:
    """Add ``embeddings`` (:func:`read_textual_inversions`) to ``sd``'s tokenizer and text encoder in
    place, as diffusers' ``load_textual_inversion``: each token appended to the tokenizer in order, its
    vector written to the token id's row of the input embeddings; ``sd.prompt_expansions`` gets each
    multi-vector token's expansion. Everything is checked before anything changes."""
    if not embeddings:
        return
    table = sd.text_encoder.get_input_embeddings()
    width, vocab = table.weight.shape[1], sd.tokenizer.get_vocab()
    for emb in embeddings:
        if emb.vectors.shape[1] != width:
            raise DiffkitError(f"{FLAG} {emb.path}: the embedding of {emb.token} has width {emb.vectors.shape[1]}; "
                               f"this text encoder's token embeddings have width {width}")
        taken = next((t for t in emb.tokens if t in vocab), None)
        if taken is not None:
            raise DiffkitError(f"{FLAG} {emb.path}: token {taken} is already in the tokenizer's vocabulary; give "
                               f"another ({FLAG} {emb.path}:TOKEN)")
    ids = []
    for emb in embeddings:
        for t in emb.tokens:
            sd.tokenizer.add_tokens(t)
            ids.append(sd.tokenizer.convert_tokens_to_ids(t))
    old = table.weight
    rows = max(old.shape[0], max(ids) + 1)
    weight = torch.cat([old.detach(), old.new_zeros(rows - old.shape[0], width)])
    weight[torch.tensor(ids, device=weight.device)] = torch.cat([e.vectors for e in embeddings]).to(weight)
    table.weight = torch.nn.Parameter(weight, requires_grad=False)
    table.num_embeddings = rows
    sd.text_encoder.config.vocab_size = rows
    sd.prompt_expansions.update({e.token: " ".join(e.tokens) for e in embeddings if len(e.tokens) > 1})


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
