"""``diffkit edit --checkpoint VISUALCLOZE_FOLDER --example PNG,PNG --query PNG,target --task-prompt TEXT``: a
VisualCloze folder (``model_index.json`` naming ``VisualClozeGenerationPipeline`` or ``VisualClozePipeline``)
generates each query's targets from the in-context examples, as VisualClozeGenerationPipeline
(:func:`diffkit.interop.visualcloze.generate`), dispatched from :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError

TARGET = "target"  # the --query entry of an image to generate (the pipeline's None)
NO_UPSAMPLING = ("diffkit runs the generation stage (VisualClozeGenerationPipeline, the images at --resolution); "
                 "VisualClozePipeline's upsampling stage (upsampling_height / upsampling_width / upsampling_strength: "
                 "FluxFillPipeline over each target) is not driven")
VISUALCLOZE_FLAGS = {"examples": "--example", "queries": "--query", "task_prompts": "--task-prompt",
                     "resolution": "--resolution"}


def add_visualcloze_flags(parser) -> None:
    """``--example``, ``--query``, ``--task-prompt``, ``--resolution`` (VisualCloze folders)."""
    from ._common import positive_int
    g = parser.add_argument_group("VisualCloze folders (in-context generation; docs/interop/visualcloze.md)")
    g.add_argument("--example", dest="examples", action="append", metavar="PNG,PNG[,...]",
                   help="one in-context example of the task: its images, comma-separated, in the task's order "
                        "(repeatable: one row of the grid each, shared by every --query)")
    g.add_argument("--query", dest="queries", action="append", metavar="PNG|target,...",
                   help="one query: its images in the task's order, 'target' for each image to generate (the "
                        "pipeline's None); repeatable, query i from --seed + i, written as edit_0000i.png (several "
                        "targets: edit_0000i_colC.png, C the target's column from 1)")
    g.add_argument("--task-prompt", dest="task_prompts", action="append", metavar="TEXT",
                   help="the task's description (the pipeline's task_prompt), once for every query or once per "
                        "--query; --prompt is the content prompt (optional, the same counts)")
    g.add_argument("--resolution", type=positive_int, metavar="N",
                   help="each grid image is resized to about N x N pixels at its aspect ratio (the pipeline's "
                        "resolution; default the folder's model_index.json, 384)")


def check_visualcloze_flags(args) -> None:
    """One line for a VisualCloze flag on a checkpoint that is no VisualCloze folder."""
    for dest, flag in VISUALCLOZE_FLAGS.items():
        if getattr(args, dest) is not None:
            raise DiffkitError(f"{flag} applies to a VisualCloze folder (VisualClozeGenerationPipeline); "
                               f"{args.checkpoint} is not one")


def _row(text: str, flag: str) -> list:
    """The paths of one ``--example`` / ``--query`` (None for ``target`` in a query); one line for a missing
    file or an empty entry."""
    from pathlib import Path
    row = []
    for entry in text.split(","):
        entry = entry.strip()
        if flag == "--query" and entry == TARGET:
            row.append(None)
        elif not entry or not Path(entry).is_file():
            raise DiffkitError(f"{flag} {text!r}: {entry!r} is not a file; give comma-separated PNGs"
                               f"{' and ' + TARGET + ' for each image to generate' if flag == '--query' else ''}")
        else:
            row.append(Path(entry))
    return row


def _per_query(values, count: int, flag: str) -> list:
    if values is None:
        return [None] * count
    if len(values) not in (1, count):
        raise DiffkitError(f"{flag} is given {len(values)} times for {count} queries; give it once (every query) or "
                           f"once per --query")
    return list(values) * count if len(values) == 1 else list(values)


def edit_visualcloze(args) -> int:
    """Every ``--query`` (with the ``--example`` rows before it) generated as VisualClozeGenerationPipeline: 50
    steps of flow Euler on its sigmas (``--sampler`` / ``--steps`` and the grid flags: any other), the embedded
    guidance 30 (``--guidance-scale``), ``--max-sequence-length``, ``--resolution``; query i from ``--seed`` + i.
    A VisualClozePipeline (combined) folder runs its generation stage (upsampling_strength=0). Every other edit
    flag: one line, before any weight is read or any folder is made."""
    from pathlib import Path

    from ..checkpoint import atomic_write_bytes
    from ..config import resolve_device
    from ..images import png_bytes, to_uint8
    from ..interop.visualcloze import check_grid, check_resolution, generate, load_visualcloze
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._sd3 import edit_sampling, refuse_other_edit_flags

    directory = args.checkpoint
    if args.images is not None:
        raise DiffkitError(f"--images does not apply to a VisualCloze folder ({directory}): give each query as "
                           f"--query PNG,target (its images in the task's order, target for each to generate) and "
                           f"the in-context examples as --example PNG,PNG")
    upsampling = [flag for flag, value in (("--height", args.height), ("--width", args.width),
                                           ("--strength", args.strength)) if value is not None]
    if upsampling:
        raise DiffkitError(f"{upsampling[0]} does not apply to a VisualCloze folder ({directory}): "
                           f"{NO_UPSAMPLING}")
    refuse_other_edit_flags(args, VISUALCLOZE_EDIT_FLAGS, directory, "VisualCloze")
    if not args.queries or not args.task_prompts:
        raise DiffkitError(f"{directory} is a VisualCloze folder: give --query PNG,target (repeatable), "
                           f"--task-prompt TEXT and the in-context examples as --example PNG,PNG (repeatable)")
    if args.resolution is not None:
        check_resolution(args.resolution)
    examples = [_row(text, "--example") for text in args.examples or []]
    queries = [_row(text, "--query") for text in args.queries]
    grids = [examples + [query] for query in queries]
    for i, grid in enumerate(grids):  # the rows' lengths, targets and files, before loading
        check_grid(grid, f"--query {args.queries[i]!r} with the --example rows")
    tasks = _per_query(args.task_prompts, len(grids), "--task-prompt")
    contents = _per_query(args.prompts, len(grids), "--prompt")
    info, own, options, _ = edit_sampling(args, directory)
    out, device = Path(args.out), resolve_device(args.device)
    new_dirs = missing_dirs(out)
    vc = load_visualcloze(directory, device, progress=args.progress, resolution=args.resolution)
    vc.flux.check_guidance_scale(args.guidance_scale)
    check_writable_dir(out)
    names = []
    for i, query in enumerate(queries):
        columns = [c + 1 for c, image in enumerate(query) if image is None]
        names.append([f"edit_{i:05d}.png"] if len(columns) == 1 else [f"edit_{i:05d}_col{c}.png" for c in columns])
    stale = [name for row in names for name in row if (out / name).exists()]
    if stale:
        raise DiffkitError(f"{str(out)!r} holds {stale[0]} of an earlier run; give an empty folder or remove it")
    with removed_if_empty_on_failure(new_dirs):
        for i, grid in enumerate(grids):
            images = generate(vc, grid, tasks[i], contents[i], sampler=None if own else info.name, steps=args.steps,
                              guidance_scale=args.guidance_scale, seed=args.seed + i,
                              max_sequence_length=args.max_sequence_length or 512, progress=args.progress,
                              **({} if own else options))[0]
            for name, image in zip(names[i], images):
                atomic_write_bytes(out / name, png_bytes(to_uint8(image[None] * 2 - 1)[0]))
    grid = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    print(f"wrote {sum(map(len, names))} images of {len(queries)} queries to {out} ({names[0][0]} ...; VisualCloze "
          f"folder {directory}, {len(examples)} in-context examples, {grid})")
    return 0


VISUALCLOZE_EDIT_FLAGS = {  # diffkit edit's dests a VisualCloze folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "out", "seed", "device", "progress", "prompts", "max_sequence_length",
    "sampler", "steps", "spacing", "final", "eta", "guidance_scale", "images", *VISUALCLOZE_FLAGS}
