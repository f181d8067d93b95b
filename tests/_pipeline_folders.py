"""The tiny diffusers folders' fixtures share this: a saved folder loaded back by diffusers and by diffkit."""


def reloaded(path, pipeline_class, loader, **components):
    """(``pipeline_class.from_pretrained`` of the saved folder ``path`` with its progress bars off, ``path``,
    diffkit's ``loader(path, progress=False)``): the pipeline every comparison runs against is the one read back
    from disk, as diffkit reads it (``components``: ones given to from_pretrained instead, e.g. a processor that
    transformers cannot read back without torchvision)."""
    pipe = pipeline_class.from_pretrained(path, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, loader(path, progress=False)
