"""``diffkit experiment``: tables of one metric over sampler settings for a checkpoint.

``ddim-table``: DDIM Table 1 layout, eta in {0, 0.2, 0.5, 1, sigma_hat} x steps {10, 20, 50, 100, 1000};
``--spacing quadratic`` puts every row on DDIM's quadratic sub-sequence (its CIFAR-10 choice).
``sampler-table``: PNDM layout, samplers (ddim, s-pndm, pndm, fon, dpm-solver, dpm-solver++-2m, unipc; those not
registered are skipped with a note) x steps, or x NFE (``--nfe 21,41,81``: equal cost for samplers of different
calls per step). Writes OUT/<name>.md, .csv, .json and .png.
``--cache-dir DIR`` keeps every finished batch of samples; the same command run again reuses them, so a long
table (S = 1000 on a CPU) can be stopped and continued with exactly the samples of one uninterrupted run.
``--ledger FILE`` keeps only the finished cells' scores (small enough to commit): a later run, on another day or
machine, computes only the cells missing from it.
``noise-scale``: the gradient noise scale B_simple of L_simple, L_hybrid and L_vlb (uniform and importance-sampled
timesteps) for a checkpoint (Improved DDPM Sec. 3.3); see ``diffkit experiment noise-scale --help``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError
from ._common import (add_restarts_flag, add_thresholding_flag, check_writable_dir, eta_value, file_stem, missing_dirs,
                      path_arg, positive_int, removed_if_empty_on_failure)


def register(sub) -> None:
    p = sub.add_parser("experiment", help="sampler x steps tables (DDIM Table 1, PNDM layout); gradient noise scales",
                       description=__doc__)
    tables = p.add_subparsers(dest="table", metavar="TABLE", required=True)
    from ..experiments import DDIM_ETAS, DDIM_SPACINGS, DDIM_STEPS, PNDM_SAMPLERS, PNDM_STEPS
    ddim = tables.add_parser("ddim-table", help="DDIM eta x steps", description=__doc__)
    ddim.add_argument("--etas", default=",".join("sigma_hat" if e == "sigma_hat" else f"{e:g}" for e in DDIM_ETAS),
                      help="comma-separated etas (numbers >= 0 or sigma_hat; default %(default)s)")
    ddim.add_argument("--steps", default=",".join(map(str, DDIM_STEPS)), help="step counts (default %(default)s)")
    ddim.add_argument("--spacing", choices=DDIM_SPACINGS, default="linear",
                      help="sub-sequence tau of every row: linear, floor(c i) (default), or quadratic, floor(c i^2) "
                           "(DDIM's CIFAR-10 choice, Sec. 5 / App. D.2)")
    samplers = tables.add_parser("sampler-table", help="samplers x steps", description=__doc__)
    samplers.add_argument("--samplers", default=",".join(PNDM_SAMPLERS),
                          help="sampler names, or NAME[@SPACING][:FINAL] for another time grid or final "
                               "target (default %(default)s)")
    columns = samplers.add_mutually_exclusive_group()
    columns.add_argument("--steps", help=f"step counts (default {','.join(map(str, PNDM_STEPS))})")
    columns.add_argument("--nfe", help="network evaluations per sample instead of steps, e.g. 21,41,81: each cell "
                         "runs the step count that spends exactly that many (a sampler that cannot gets an empty "
                         "cell and a note; 'diffkit samplers' lists each sampler's NFE rule)")
    samplers.add_argument("--eta", type=eta_value, help="DDIM eta (a number >= 0 or sigma_hat) for the ddim rows, "
                          "e.g. --samplers ddim,ddim@quadratic --eta 1 (default 0)")
    add_restarts_flag(samplers, "the restart intervals of the restart rows")  # sample's flag
    from .eval import add_source_flags
    for q, name in ((ddim, "ddim_table"), (samplers, "sampler_table")):
        q.add_argument("--checkpoint", type=path_arg, required=True, help="a diffkit checkpoint (.safetensors)")
        q.add_argument("--metric", default="fd-classifier", help="one sample metric (default fd-classifier)")
        q.add_argument("--num", type=positive_int, default=1000, help="samples per cell (default 1000)")
        q.add_argument("--out", type=path_arg, default="experiments", help="output folder (default experiments)")
        if q is ddim:
            q.add_argument("--thresholding", choices=("clip", "dynamic", "none"),
                           help="clip the predicted x0 of every row; none: of no row (default: only the sigma_hat "
                                "row is clipped, as the DDIM reference code does)")
        else:
            add_thresholding_flag(q)
        q.add_argument("--name", type=file_stem, default=name, help=f"file name stem (default {name})")
        q.add_argument("--ledger", type=path_arg,
                       help="JSON file of finished cells: cells already there (same weights, "
                       "evaluator, reference, settings, --num and --seed) are taken from it, each new cell is "
                       "added as it finishes; small enough to commit, so a table can be finished over many runs")
        q.add_argument("--ledger-only", action="store_true",
                       help="show the cells found in --ledger and sample nothing (missing cells stay empty)")
        add_source_flags(q)
        q.set_defaults(func=run)
    from .noise_scale import add_parser
    add_parser(tables)


def run(args) -> int:
    ledger_dir = Path(args.ledger).parent if args.ledger else None
    new_dirs = [d for folder in (args.out, args.cache_dir, ledger_dir) if folder for d in missing_dirs(folder)]
    with removed_if_empty_on_failure(new_dirs):  # a refused or failed table leaves no empty folder
        return _run(args)


def _run(args) -> int:
    from ..config import resolve_device
    from ..evaluation import check_scoring_files_used, parse_eta, parse_metrics
    from ..experiments import ddim_table, experiment_scorer, parse_list, sampler_table, to_markdown, write_table
    from ..loading import load_denoiser
    from .eval import printed_warnings
    check_scoring_files_used(parse_metrics(args.metric), "--metric", inception_weights=args.inception_weights,
                             evaluator=args.evaluator)
    nfe_list = parse_list(args.nfe, "nfe") if getattr(args, "nfe", None) is not None else None
    steps_list = None if nfe_list is not None or args.steps is None else parse_list(args.steps, "steps")
    etas = parse_list(args.etas, "etas", parse_eta) if args.table == "ddim-table" else None
    names = parse_list(args.samplers, "samplers", str) if args.table == "sampler-table" else None
    from ..sampling import resolve_sampler
    for name in names or ():
        resolve_sampler(name)  # a typo fails now, not as a note in the finished table
    device = str(resolve_device(args.device))
    from ..experiments import check_table_outputs
    check_table_outputs(args.out, args.name, keep=[args.ledger])  # before hours of sampling, not after
    check_writable_dir(args.out, "output directory")
    if args.cache_dir is not None:
        check_writable_dir(args.cache_dir, "sample cache directory")
    if args.ledger is None and args.ledger_only:
        raise DiffkitError("--ledger-only needs --ledger FILE (the cells to show)")
    if args.ledger is not None and not args.ledger_only:  # --ledger-only reads it: a read-only ledger will do
        check_writable_dir(Path(args.ledger).parent, "score ledger directory")
    with printed_warnings():
        denoiser = load_denoiser(args.checkpoint, use_ema=args.ema, device=device,
                                 mixed_precision=args.mixed_precision, compile=args.compile)
        scorer = experiment_scorer(args.metric, denoiser, ref=args.ref, data_dir=args.data_dir, ref_num=args.ref_num,
                                   evaluator=args.evaluator, inception_weights=args.inception_weights,
                                   batch_size=args.batch_size, device=device)
        common = dict(num=args.num, seed=args.seed, batch_size=args.batch_size,
                      device=device, progress=args.progress, thresholding=args.thresholding,
                      cache_dir=args.cache_dir, ledger_path=args.ledger, ledger_only=args.ledger_only)
        if args.table == "ddim-table":
            table = ddim_table(denoiser, scorer, etas=etas, spacing=args.spacing, steps_list=steps_list, **common)
        else:
            table = sampler_table(denoiser, scorer, samplers=names, eta=args.eta, restarts=args.restarts,
                                  nfe_list=nfe_list, steps_list=steps_list, **common)
    paths = write_table(table, args.out, args.name, "heatmap" if args.table == "ddim-table" else "lines")
    print(to_markdown(table))
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({table.seconds:.0f} s)")
    return 0
