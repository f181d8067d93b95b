"""The tiny diffusers folders' fixtures share this: a saved folder loaded back by diffusers and by diffkit."""


def reloaded(path, pipeline_class, loader, **components):
    """(``pipeline_class.from_pretrained`` of the saved folder ``path`` with its progress bars off, ``path``,
    diffkit's ``loader(path, progress=False)``): the pipeline every comparison runs against is the one read back
    from disk, as diffkit reads it (``components``: ones given to from_pretrained instead, e.g. a processor that
    transformers cannot read back without torchvision)."""
    pipe = pipeline_class.from_pretrained(path, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, loader(path, progress=False)


def changed_folder(folder, root, part, change, parts=("model_index.json", "scheduler", "transformer", "text_encoder",
                                                      "tokenizer", "vae")):
    """A folder under ``root`` of links to ``folder``'s ``parts`` with ``part``'s JSON (``model_index.json`` or
    ``COMPONENT/config.json``) updated by ``change``: the component's weights linked, its config rewritten (the
    refusal tests' folders)."""
    import json
    import re
    bad, name = root / re.sub(r"\W", "_", part + str(change)), part.split("/")[0]
    for sub in parts:
        if sub != name:
            (bad / sub).parent.mkdir(parents=True, exist_ok=True)
            (bad / sub).symlink_to(folder / sub)
    if name != part:
        (bad / name).mkdir()
        for weights in (folder / name).glob("*.safetensors"):
            (bad / name / weights.name).symlink_to(weights)
    (bad / part).write_text(json.dumps({**json.loads((folder / part).read_text()), **change}))
    return bad
