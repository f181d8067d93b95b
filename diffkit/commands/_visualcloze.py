"""``diffkit edit --checkpoint VISUALCLOZE_FOLDER --example PNG,PNG --query PNG,target --task-prompt TEXT``: a
VisualCloze folder (``model_index.json`` naming ``VisualClozeGenerationPipeline`` or ``VisualClozePipeline``)
generates each query's targets from the in-context examples, as VisualClozeGenerationPipeline
(:func:`diffkit.interop.visualcloze.generate`), dispatched from :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ..errors import DiffkitError

TARGET = "target"  # the --query entry of an image to generate (the pipeline's None)
VISUALCLOZE_FLAGS = {"examples": "--example", "query_examples": "--query-examples", "queries": "--query",
                     "task_prompts": "--task-prompt", "resolution": "--resolution",
                     "generation_only": "--generation-only"}
ROWS = ";"  # between the in-context examples of one --query-examples


def add_visualcloze_flags(parser) -> None:
    """``--example``, ``--query-examples``, ``--query``, ``--task-prompt``, ``--resolution``, ``--generation-only``
    (VisualCloze folders; ``--strength`` / ``--height`` / ``--width``: the upsampling stage's)."""
    from ._common import positive_int
    g = parser.add_argument_group("VisualCloze folders (in-context generation; docs/interop/visualcloze.md)")
    g.add_argument("--example", dest="examples", action="append", metavar="PNG,PNG[,...]",
                   help="one in-context example of the task: its images, comma-separated, in the task's order "
                        "(repeatable: one row of the grid each, shared by every --query)")
    g.add_argument("--query-examples", dest="query_examples", action="append", metavar="PNG,PNG[;PNG,PNG...]",
                   help="instead of --example: the in-context examples of one query, one row each, the rows "
                        "separated by ';' (repeatable: the k-th use the k-th --query's, as the pipeline's image list "
                        "of one grid per query; once: every query's)")
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
    g.add_argument("--generation-only", action="store_true",
                   help="VisualClozePipeline (combined) folders: skip the upsampling stage (upsampling_strength=0), "
                        "which otherwise runs at --strength (default 1.0, the pipeline's) and --height x --width "
                        "(default 1024 x 1024); on a VisualClozeGenerationPipeline folder upsampling runs only with "
                        "--strength")


def check_visualcloze_flags(args) -> None:
    """One line for a VisualCloze flag on a checkpoint that is no VisualCloze folder."""
    for dest, flag in VISUALCLOZE_FLAGS.items():
        if getattr(args, dest) not in (None, False):
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
                               f"{' (the rows separated by ' + repr(ROWS) + ')' if flag == '--query-examples' else ''}"
                               f"{' and ' + TARGET + ' for each image to generate' if flag == '--query' else ''}")
        else:
            row.append(Path(entry))
    return row


def _examples(args) -> list:
    """Each query's in-context example rows: ``--example``'s for every query, or ``--query-examples``' (once, or
    once per ``--query``); one line for both flags, a count that does not fit or an empty row."""
    if args.examples is not None and args.query_examples is not None:
        raise DiffkitError("--example and --query-examples are given together; give the in-context examples one way "
                           "(--example: every query's, --query-examples: once per --query)")
    if args.query_examples is None:
        return [[_row(text, "--example") for text in args.examples or []]] * len(args.queries)
    return [[_row(row, "--query-examples") for row in text.split(ROWS)]
            for text in _per_query(args.query_examples, len(args.queries), "--query-examples")]


def _per_query(values, count: int, flag: str) -> list:
    if values is None:
        return [None] * count
    if len(values) not in (1, count):
        raise DiffkitError(f"{flag} is given {len(values)} times for {count} queries; give it once (every query) or "
                           f"once per --query")
    return list(values) * count if len(values) == 1 else list(values)


def edit_visualcloze(args) -> int:
    """Every ``--query`` (with the ``--example`` rows, or its ``--query-examples``, before it) generated as
    VisualClozeGenerationPipeline: 50 steps of flow Euler on its sigmas (``--sampler`` / ``--steps`` and the grid
    flags: any other), the embedded guidance 30 (``--guidance-scale``), ``--max-sequence-length``,
    ``--resolution``; query i from ``--seed`` + i.
    Then the upsampling stage (:func:`upsampling_strength`): ``--strength`` (a combined folder's default 1.0),
    ``--height`` x ``--width`` (default 128 f each), as VisualClozePipeline / VisualClozeUpsamplingPipeline. Every
    other edit flag: one line, before any weight is read or any folder is made."""
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
                           f"the in-context examples as --example PNG,PNG (or per query --query-examples)")
    strength = upsampling_strength(args)
    from ._image_size import check_image_size
    check_image_size(directory, args.height, args.width, edit=True)  # the upsampling's size: multiples of 2 f
    refuse_other_edit_flags(args, VISUALCLOZE_EDIT_FLAGS, directory, "VisualCloze")
    if not args.queries or not args.task_prompts:
        raise DiffkitError(f"{directory} is a VisualCloze folder: give --query PNG,target (repeatable), "
                           f"--task-prompt TEXT and the in-context examples as --example PNG,PNG (repeatable)")
    if args.resolution is not None:
        check_resolution(args.resolution)
    examples = _examples(args)
    queries = [_row(text, "--query") for text in args.queries]
    grids = [rows + [query] for rows, query in zip(examples, queries)]
    for i, grid in enumerate(grids):  # the rows' lengths, targets and files, before loading
        check_grid(grid, f"--query {args.queries[i]!r} with "
                         f"{'the --example rows' if args.query_examples is None else 'its --query-examples'}")
    tasks = _per_query(args.task_prompts, len(grids), "--task-prompt")
    contents = _per_query(args.prompts, len(grids), "--prompt")
    info, own, options, _ = edit_sampling(args, directory, prompts=False)
    out, device = Path(args.out), resolve_device(args.device)
    new_dirs = missing_dirs(out)
    vc = load_visualcloze(directory, device, progress=args.progress, resolution=args.resolution, lora=args.lora)
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
                              upsampling_strength=strength, upsampling_height=args.height,
                              upsampling_width=args.width, **({} if own else options))[0]
            for name, image in zip(names[i], images):
                atomic_write_bytes(out / name, png_bytes(to_uint8(image[None] * 2 - 1)[0]))
    grid = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    counts = "/".join(sorted({str(len(rows)) for rows in examples}))  # "2", or "1/2" per query
    print(f"wrote {sum(map(len, names))} images of {len(queries)} queries to {out} ({names[0][0]} ...; VisualCloze "
          f"folder {directory}, {counts} in-context examples, {grid}"
          f"{f', upsampled at strength {strength:g}' if strength else ''})")
    return 0


VISUALCLOZE_EDIT_FLAGS = {  # diffkit edit's dests a VisualCloze folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "out", "seed", "device", "progress", "prompts", "max_sequence_length",
    "sampler", "steps", "spacing", "final", "eta", "guidance_scale", "images", "strength", "height", "width", "lora",
    *VISUALCLOZE_FLAGS}


def upsampling_strength(args) -> float:
    """The upsampling stage's strength (0: none) of a VisualCloze folder's flags: ``--strength``, else the combined
    folder's default 1.0 (VisualClozePipeline's upsampling_strength) unless ``--generation-only``; one line for
    ``--generation-only`` on a generation folder or with ``--strength``, ``--height`` / ``--width`` without
    upsampling."""
    from ..interop.sd_xl import pipeline_class
    from ..interop.visualcloze import VISUALCLOZE_COMBINED
    combined = pipeline_class(args.checkpoint) == VISUALCLOZE_COMBINED
    if args.generation_only and not combined:
        raise DiffkitError(f"--generation-only applies to a VisualClozePipeline (combined) folder; {args.checkpoint} "
                           f"is a VisualClozeGenerationPipeline one, which upsamples only with --strength")
    if args.generation_only and args.strength is not None:
        raise DiffkitError("--generation-only skips the upsampling stage that --strength sets; give one of them")
    strength = args.strength if args.strength is not None else 1.0 if combined and not args.generation_only else 0.0
    given = [flag for flag, value in (("--height", args.height), ("--width", args.width)) if value is not None]
    if given and not strength:
        raise DiffkitError(f"{given[0]} sets the size of the upsampling stage (VisualClozePipeline's "
                           f"upsampling_height / upsampling_width), which runs with --strength S (or on a combined "
                           f"folder without --generation-only); the grid's size is --resolution")
    return strength
