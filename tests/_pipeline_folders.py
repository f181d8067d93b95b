"""The tiny diffusers folders' fixtures share this: a saved folder loaded back by diffusers and by diffkit."""


def reloaded(path, pipeline_class, loader):
    """(``pipeline_class.from_pretrained`` of the saved folder ``path`` with its progress bars off, ``path``,
    diffkit's ``loader(path, progress=False)``): the pipeline every comparison runs against is the one read back
    from disk, as diffkit reads it."""
    pipe = pipeline_class.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, path, loader(path, progress=False)
