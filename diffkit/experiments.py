"""Experiment tables: one metric over a grid of sampler settings for one checkpoint.

* :func:`ddim_table` - the layout of DDIM (Song et al. 2021) Table 1: rows eta in
  {0, 0.2, 0.5, 1, sigma-hat}, columns S in {10, 20, 50, 100, 1000} sampling steps.
* :func:`sampler_table` - the layout of PNDM (Liu et al. 2022) Table 1/2: rows samplers
  (ddim, s-pndm, pndm = F-PNDM, fon, dpm-solver, dpm-solver++-2m, unipc, as registered), columns steps.

Every cell starts from the same noise (sample i from seed + i) and is scored against the same
reference statistics, computed once (:class:`diffkit.evaluation.SampleScorer`). A cell that ran
out of accelerator memory and halved its batch hands the size that fit to the cells after it
(with a note in the table), which then draw the same samples without running out again. Tables are
written as Markdown, CSV, JSON and a PNG (heat-map for the DDIM table, lines for samplers).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import DiffkitError, WriteError, check_choice, check_range
from .evaluation import (LOWER_IS_BETTER, NLL_METRICS, PRIMARY_FIELD, generate_samples, image_shape, sample_labels,
                         write_json)

DDIM_ETAS: tuple = (0.0, 0.2, 0.5, 1.0, "sigma_hat")
DDIM_STEPS = (10, 20, 50, 100, 1000)
DDIM_SPACINGS = ("linear", "quadratic")  # DDIM Sec. 5: the two sub-sequences tau of its tables
PNDM_SAMPLERS = ("ddim", "s-pndm", "pndm", "fon", "dpm-solver", "dpm-solver++-2m", "unipc")
PNDM_STEPS = (10, 20, 50, 100, 250, 1000)


@dataclass
class ExperimentTable:
    """``values[i][j]``: the metric for row ``rows[i]`` at column ``steps[j]`` (None: not run, see notes).
    ``columns``: what the column values ``steps`` are, step counts (``"steps"``) or network evaluations
    per sample (``"nfe"``: each cell runs the step count that spends exactly that many, ``cell_steps``)."""

    title: str
    metric: str
    row_label: str
    rows: list
    steps: list
    values: list
    nfe: list
    num_samples: int
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    spacing: Optional[str] = None  # the time grid of every row (ddim_table); None: each row's own
    columns: str = "steps"
    cell_steps: Optional[list] = None  # columns "nfe": the step count of each cell (None: not run)

    def as_dict(self) -> dict:
        return asdict(self)


def _row_name(row) -> str:
    return "sigma_hat" if row == "sigma_hat" else (f"{row:g}" if isinstance(row, float) else str(row))


def _check_metric(scorer) -> str:
    if len(scorer.metrics) != 1:
        raise DiffkitError(f"a table shows one metric; the scorer has {scorer.metrics}")
    metric = scorer.metrics[0]
    if metric in NLL_METRICS:
        raise DiffkitError(f"metric {metric!r} does not depend on the sampler; tables take sample metrics")
    return metric


def _check_steps(steps_list: Sequence[int], num_timesteps: int, columns: str = "steps") -> list[int]:
    steps_list = list(steps_list)
    if not steps_list:
        raise DiffkitError(f"{columns} list is empty; give at least one " +
                           ("step count, e.g. 10,20,50" if columns == "steps" else "NFE, e.g. 21,41,81"))
    for s in steps_list:
        check_range(columns, s, 1, num_timesteps if columns == "steps" else None, integer=True)
    return steps_list


def _run_grid(denoiser, scorer, rows, steps_list, settings_of, *, num, seed, batch_size, device, progress,
              title, row_label, notes, thresholding=None, cache_dir=None, ledger_path=None,
              ledger_only=False, columns="steps") -> ExperimentTable:
    metric = _check_metric(scorer)
    steps_list = _check_steps(steps_list, denoiser.schedule.num_timesteps, columns)
    labels = sample_labels(denoiser, num)
    scorer.check_request(num, labels is not None)  # before any cell is sampled
    if thresholding is not None:
        notes.append(f"predicted x0 thresholding: {thresholding}")
    if getattr(denoiser, "mixed_precision", "no") != "no":
        notes.append(f"network under {denoiser.mixed_precision} autocast (--mixed-precision)")
    if getattr(denoiser, "compiled", "no") != "no":
        notes.append(f"network compiled with torch.compile mode {denoiser.compiled} (--compile)")
    from .sample_cache import open_cache
    from .score_ledger import open_ledger
    cache = open_cache(cache_dir, denoiser)
    if ledger_only and ledger_path is None:
        raise DiffkitError("ledger_only needs a ledger file (--ledger FILE) to read the cells from")
    if ledger_only and not Path(ledger_path).is_file():  # an empty table would replace the last one written
        raise DiffkitError(f"ledger {str(ledger_path)!r} does not exist; --ledger-only shows the cells of an existing "
                           f"ledger")
    ledger = open_ledger(ledger_path, denoiser, scorer)
    missing = []
    values = [[None] * len(steps_list) for _ in rows]
    nfe = [[None] * len(steps_list) for _ in rows]
    cell_steps = [[None] * len(steps_list) for _ in rows]
    start = time.perf_counter()

    def keep_what_fit(drawn) -> None:
        """A cell that halved its batch for memory: the later cells start at the size that fit (their
        samples do not depend on it: sample i from seed + i)."""
        nonlocal batch_size
        if drawn.batch_size < drawn.first_batch_size:
            notes.append(f"out of memory with a batch of {drawn.first_batch_size} at {_row_name(row)}, {steps} steps: "
                         f"batches of {drawn.batch_size} from there on")
            batch_size = drawn.batch_size

    for i, row in enumerate(rows):
        sampler, options = settings_of(row)
        if thresholding is not None:
            options = {**options, "thresholding": thresholding}
        for j, column in enumerate(steps_list):
            steps = column
            if columns == "nfe":  # the step count that spends exactly this NFE; the cell's key is by steps
                from .sampling import steps_for_nfe
                try:
                    steps = steps_for_nfe(denoiser, sampler, column, **options)
                except DiffkitError as err:
                    notes.append(f"{_row_name(row)} at NFE {column} not run: {err}")
                    continue
            cell_steps[i][j] = steps
            settings = {"sampler": sampler, "steps": steps, **options}
            found = None if ledger is None else ledger.get(settings, num, seed)
            if found is not None:
                scores, nfe[i][j] = found
                value = (scores.get(metric) or {}).get(PRIMARY_FIELD[metric])
                if value is None:
                    raise DiffkitError(f"score ledger {ledger_path} has a damaged cell ({_row_name(row)} at {steps} "
                                       f"steps has no {metric}); mend or remove that cell, or give another --ledger "
                                       f"path")
                values[i][j] = value
                if progress:
                    print(f"  {row_label}={_row_name(row)} steps={steps}: {metric}={values[i][j]:.4g} "
                          f"(from the ledger)", flush=True)
                continue
            if ledger_only:
                missing.append(f"{_row_name(row)}@{steps}" + (f" (NFE {column})" if columns == "nfe" else ""))
                continue
            try:
                reused, stored = (cache.loaded, cache.saved) if cache is not None else (0, 0)
                images, nfe[i][j] = generate_samples(denoiser, num, sampler=sampler, steps=steps, seed=seed,
                                                     batch_size=batch_size, labels=labels, device=device,
                                                     cache=cache, return_nfe=True, on_drawn=keep_what_fit,
                                                     **options)
            except WriteError:
                raise  # a full disk ends the run (one line, status 2); it is not this cell's note
            except DiffkitError as err:
                notes.append(f"{_row_name(row)} at {steps} steps not run: {err}")
                continue
            if columns == "nfe" and nfe[i][j] is not None and nfe[i][j] != column:  # steps_for_nfe's grid is sample's
                raise DiffkitError(f"{_row_name(row)} with {steps} steps spent {nfe[i][j]:g} network evaluations per "
                                   f"sample, not the column's {column}")
            scores = scorer.score(images, labels)
            values[i][j] = scores[metric][PRIMARY_FIELD[metric]]
            if ledger is not None:
                ledger.put(settings, num, seed, scores, nfe[i][j])
            if progress:
                note = ""
                if cache is not None:  # each batch read from it or stored in it (the sizes out-of-memory halvings left)
                    loaded = cache.loaded - reused
                    note = f" ({loaded} of {loaded + cache.saved - stored} batches from the cache)"
                print(f"  {row_label}={_row_name(row)} steps={steps}: {metric}={values[i][j]:.4g}{note}", flush=True)
    if cache is not None:
        notes.append(f"sample cache {cache_dir}: {cache.loaded} batches reused, {cache.saved} sampled and stored")
    if ledger is not None:
        notes.append(f"score ledger {ledger_path}: {ledger.reused} cells taken from it, {ledger.recorded} added")
    if missing:
        notes.append(f"not in the ledger, not sampled (ledger only): {', '.join(missing)}")
    return ExperimentTable(title, metric, row_label, [_row_name(r) for r in rows], steps_list, values, nfe,
                           num, notes, time.perf_counter() - start, columns=columns,
                           cell_steps=cell_steps if columns == "nfe" else None)


def ddim_table(denoiser, scorer, *, etas: Sequence[Union[float, str]] = DDIM_ETAS,
               steps_list: Sequence[int] = DDIM_STEPS, num: int = 1000, seed: int = 0, batch_size: int = 250,
               device=None, progress: bool = False, thresholding: Optional[str] = None,
               spacing: str = "linear", cache_dir=None, ledger_path=None,
               ledger_only: bool = False) -> ExperimentTable:
    """DDIM Table 1: the metric of DDIM with each eta (or the sigma-hat process) at each step count.
    ``spacing``: the sub-sequence tau of every row, ``linear`` (tau_i = floor(c i)) or ``quadratic``
    (tau_i = floor(c i^2), what DDIM Sec. 5 / App. D.2 use for CIFAR-10; :mod:`diffkit.timesteps`).
    ``cache_dir``: keep finished sample batches there and reuse them (:mod:`diffkit.sample_cache`);
    ``ledger_path``: a JSON file of finished cells, taken from and added to (:mod:`diffkit.score_ledger`);
    ``ledger_only``: show only the cells found there, sample nothing.
    ``thresholding``: None (default) clips the sigma-hat row's predicted x0 to [-1, 1] and no other
    row, as the DDIM authors' code does (ermongroup/ddim ``functions/denoising.py``: ``ddpm_steps``,
    its sigma-hat process, clamps x0; ``generalized_steps``, its eta rows, does not); ``"none"``:
    no row thresholded; ``"clip"`` / ``"dynamic"``: every row."""
    check_choice("spacing", spacing, DDIM_SPACINGS)
    check_choice("thresholding", thresholding, (None, "none", "clip", "dynamic"))
    notes = [] if spacing == "linear" else [f"time grid: {spacing} sub-sequence tau (DDIM Sec. 5, App. D.2)"]
    reference_clip = thresholding is None
    if reference_clip and "sigma_hat" in etas:
        notes.append("sigma_hat row: predicted x0 clipped to [-1, 1], as the DDIM reference code's sigma-hat sampler "
                     "does (ermongroup/ddim ddpm_steps; its eta rows are not clipped); --thresholding none turns "
                     "it off")
    if thresholding == "none":
        notes.append("predicted x0 thresholding: none (--thresholding none), the sigma_hat row included")

    def settings_of(eta):
        options = {"eta": eta, "spacing": spacing}
        return "ddim", {**options, "thresholding": "clip"} if reference_clip and eta == "sigma_hat" else options

    title = "DDIM Table 1 layout (Song et al. 2021)" + ("" if spacing == "linear" else f", {spacing} tau")
    table = _run_grid(denoiser, scorer, list(etas), steps_list, settings_of, num=num,
                      seed=seed, batch_size=batch_size, device=device, progress=progress, title=title,
                      row_label="eta", notes=notes, thresholding=None if thresholding == "none" else thresholding,
                      cache_dir=cache_dir, ledger_path=ledger_path, ledger_only=ledger_only)
    table.spacing = spacing
    return table


def row_settings(row: str, *, eta=None, restarts=None) -> tuple[str, dict]:
    """(sampler name, options) of a sampler-table row ``NAME[@SPACING][:FINAL]``: its grid, and ``eta`` for a
    ddim row, ``restarts`` (checked, as lists) for a restart row when given."""
    from .samplers.registry import split_sampler_spec
    name, spacing, final = split_sampler_spec(row)
    options = {key: value for key, value in (("spacing", spacing), ("final", final)) if value}
    if eta is not None and name == "ddim":
        options["eta"] = eta
    if restarts is not None and name == "restart":
        options["restarts"] = restarts
    return name, options


def sampler_table(denoiser, scorer, *, samplers: Sequence[str] = PNDM_SAMPLERS,
                  steps_list: Optional[Sequence[int]] = None, num: int = 1000, seed: int = 0, batch_size: int = 250,
                  device=None, progress: bool = False, thresholding: Optional[str] = None,
                  eta: Union[float, str, None] = None, cache_dir=None, ledger_path=None,
                  ledger_only: bool = False, nfe_list: Optional[Sequence[int]] = None,
                  restarts=None) -> ExperimentTable:
    """Samplers x steps (PNDM Table 1 layout); names missing from the registry are skipped with a note.
    A row ``NAME@SPACING`` runs the sampler on another time grid (e.g. ``dpm-solver++-2m@logsnr_skip``),
    ``NAME:FINAL`` (or ``NAME@SPACING:FINAL``) to another final target (e.g. ``unipc:zero``).
    ``eta``: DDIM's eta (or ``"sigma_hat"``) for every ``ddim`` row (e.g. ``ddim@quadratic``).
    ``steps_list``: the columns' step counts (default :data:`PNDM_STEPS`). ``nfe_list``: columns of network
    evaluations per sample instead: each cell runs the step count that spends exactly that many
    (:func:`diffkit.sampling.steps_for_nfe`), so samplers of different calls per step compare at equal cost;
    a row that cannot spend it gets an empty cell and a note.
    ``restarts``: the ``(t_min, t_max, K, n)`` intervals of every ``restart`` row
    (:func:`diffkit.samplers.restart.restart`; None: its default).
    ``cache_dir``, ``ledger_path`` and ``ledger_only`` as in :func:`ddim_table`."""
    from .samplers import REGISTRY
    from .samplers.ddim import parse_eta
    from .samplers.registry import split_sampler_spec
    specs = {row: split_sampler_spec(row) for row in samplers}
    notes = [f"sampler {row!r} is not registered in this diffkit; skipped (registered: {', '.join(REGISTRY)})"
             for row in samplers if specs[row][0] not in REGISTRY]
    rows = [row for row in samplers if specs[row][0] in REGISTRY]
    adaptive = [row for row in rows if REGISTRY[specs[row][0]].adaptive]
    if adaptive:
        raise DiffkitError(f"sampler {adaptive[0]!r} picks its own steps, so a samplers x "
                           f"{'NFE' if nfe_list is not None else 'steps'} table has no row for it; run it alone "
                           f"with diffkit.sample(..., sampler={specs[adaptive[0]][0]!r}, rtol=..., atol=...)")
    if not rows:
        raise DiffkitError(f"none of the samplers {', '.join(samplers)} is registered; choose from: "
                           f"{', '.join(REGISTRY)}")
    if eta is not None:
        eta = parse_eta(eta)
        if not any(specs[row][0] == "ddim" for row in rows):
            raise DiffkitError(f"eta={eta!r} applies to ddim rows, and none of the rows {', '.join(rows)} is ddim")
        notes.append(f"ddim rows: eta = {_row_name(eta)}")
    if restarts is not None:
        from .samplers.restart import check_restarts
        restarts = [list(r) for r in check_restarts(restarts)]  # lists: as the ledger's JSON keeps them
        if not any(specs[row][0] == "restart" for row in rows):
            raise DiffkitError(f"restarts={restarts!r} applies to restart rows, and none of the rows {', '.join(rows)} "
                               f"is restart")
        notes.append(f"restart rows: restarts (t_min, t_max, K, n) = {restarts}")
    if nfe_list is not None and steps_list is not None:
        raise DiffkitError("give steps_list or nfe_list, not both")

    def settings_of(row: str):
        return row_settings(row, eta=eta, restarts=restarts)

    by_nfe = nfe_list is not None
    columns = nfe_list if by_nfe else PNDM_STEPS if steps_list is None else steps_list
    return _run_grid(denoiser, scorer, rows, columns, settings_of, num=num, seed=seed,
                     batch_size=batch_size, device=device, progress=progress,
                     title=f"Samplers x {'NFE' if by_nfe else 'steps'} (PNDM Table 1 layout, Liu et al. 2022)",
                     row_label="sampler", notes=notes, thresholding=thresholding, cache_dir=cache_dir,
                     ledger_path=ledger_path, ledger_only=ledger_only, columns="nfe" if by_nfe else "steps")


# ---------------------------------------------------------------------------- output
def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def to_markdown(table: ExperimentTable) -> str:
    """The table as Markdown: a caption with the metric and sample count, one row per setting."""
    better = "lower is better" if table.metric in LOWER_IS_BETTER else "higher is better"
    lines = [f"**{table.title}**: {table.metric} ({better}), {table.num_samples} samples per cell.", "",
             "| " + " | ".join([f"{table.row_label} \\ {table.columns}", *map(str, table.steps)]) + " |",
             "|" + "---|" * (len(table.steps) + 1)]
    for row, values in zip(table.rows, table.values):
        lines.append("| " + " | ".join([row, *map(_cell, values)]) + " |")
    lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(table: ExperimentTable) -> str:
    """Long format: one line per cell with its steps, network evaluations per sample and the sample count
    (columns "nfe": the NFE column's value, the steps that spend it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([table.row_label, "steps", "nfe", table.metric, "num_samples"])
    by_nfe = table.columns == "nfe"
    for i, (row, values, nfes) in enumerate(zip(table.rows, table.values, table.nfe)):
        for j, (column, value, nfe) in enumerate(zip(table.steps, values, nfes)):
            steps = table.cell_steps[i][j] if by_nfe else column
            nfe = column if by_nfe else nfe
            writer.writerow([row, "" if steps is None else steps, "" if nfe is None else nfe,
                             "" if value is None else repr(value), table.num_samples])
    return buffer.getvalue()


def plot_table(table: ExperimentTable, path: str | Path, kind: str = "heatmap") -> Path:
    """A heat-map (rows x steps, values written in the cells) or lines (metric against steps)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm
    data = np.array([[np.nan if v is None else v for v in row] for row in table.values], dtype=float)
    finite = data[np.isfinite(data)]
    # one diverged cell (e.g. FD 1200 beside 90-140) would flatten a linear scale
    log_scale = bool(finite.size) and finite.min() > 0 and finite.max() > 10 * finite.min()
    caption = f"{table.metric}, {table.num_samples} samples per cell" + (" (log scale)" if log_scale else "")
    if kind == "heatmap":
        fig, ax = plt.subplots(figsize=(1.2 * len(table.steps) + 2.5, 0.6 * len(table.rows) + 1.8), dpi=100)
        image = ax.imshow(data, cmap="viridis_r" if table.metric in LOWER_IS_BETTER else "viridis", aspect="auto",
                          norm=LogNorm() if log_scale else None)
        ax.set_xticks(range(len(table.steps)), [str(s) for s in table.steps])
        ax.set_yticks(range(len(table.rows)), table.rows)
        ax.set_xlabel(table.columns)
        ax.set_ylabel(table.row_label)
        if not finite.size:
            middle = 0.0
        elif log_scale:
            middle = float(np.sqrt(finite.min() * finite.max()))
        else:
            middle = (finite.min() + finite.max()) / 2
        for (i, j), value in np.ndenumerate(data):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=8,
                        color="white" if (value > middle) == (table.metric in LOWER_IS_BETTER) else "black")
        fig.colorbar(image, ax=ax, label=table.metric)
    else:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for row, values in zip(table.rows, data):
            ax.plot(table.steps, values, marker="o", label=row)
        ax.set_xscale("log")
        if log_scale:
            ax.set_yscale("log")
        ax.set_xticks(table.steps, [str(s) for s in table.steps])
        ax.set_xlabel(table.columns)
        ax.set_ylabel(table.metric)
        ax.grid(alpha=0.3)
        ax.legend(title=table.row_label, fontsize=8)
    ax.set_title(caption, fontsize=9)
    fig.tight_layout()
    from .checkpoint import atomic_write_bytes
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())  # a stop mid-way leaves the old file or none


TABLE_SUFFIXES = (".md", ".csv", ".json", ".png")


def check_table_outputs(out_dir: str | Path, stem: str, keep=()) -> None:
    """Before a table is computed: none of the files :func:`write_table` writes may be a folder or
    one of the files in ``keep`` (the score ledger: the table's JSON would replace it)."""
    kept = {Path(p).resolve() for p in keep if p is not None}
    for suffix in TABLE_SUFFIXES:
        path = Path(out_dir) / f"{stem}{suffix}"
        if path.is_dir():
            raise DiffkitError(f"{str(path)!r} is a folder; the table writes a file there (give another --out or "
                               f"--name)")
        if path.resolve() in kept:
            raise DiffkitError(f"the table would write {str(path)!r}, which is the score ledger; give the ledger "
                               f"another name, or another --out or --name")


def write_table(table: ExperimentTable, out_dir: str | Path, stem: str, kind: str = "heatmap") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` into ``out_dir``."""
    from .checkpoint import atomic_write_bytes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": atomic_write_bytes(out_dir / f"{stem}.md", to_markdown(table).encode()),
             "csv": atomic_write_bytes(out_dir / f"{stem}.csv", to_csv(table).encode()),
             "json": write_json(table.as_dict(), out_dir / f"{stem}.json")}
    paths["png"] = plot_table(table, out_dir / f"{stem}.png", kind)
    return paths


def parse_list(text: str, what: str, kind=int) -> list:
    """``"10,20,50"`` -> [10, 20, 50] with a one-line error naming the bad entry."""
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise DiffkitError(f"{what}={text!r} is empty; give a comma-separated list")
    if not all(items):  # "10,,50": a lost entry, not one to skip
        raise DiffkitError(f"{what}={text!r} has an empty entry; give a comma-separated list such as 10,20,50")
    out = []
    for item in items:
        try:
            out.append(kind(item))
        except DiffkitError:  # the parser's own one-line message
            raise
        except (TypeError, ValueError):
            expected = {int: "an integer", float: "a number"}.get(kind, getattr(kind, "__name__", "a value"))
            raise DiffkitError(f"{what} entry {item!r} is not allowed; expected {expected}") from None
    return out


def experiment_scorer(metric: str, denoiser, *, ref: Optional[str] = None, data_dir=None,
                      ref_num: Optional[int] = None, evaluator=None, inception_weights=None,
                      batch_size: int = 250, device="cpu"):
    """A :class:`~diffkit.evaluation.SampleScorer` for one metric against the reference test split."""
    from .evaluation import (EVALUATOR_METRICS, INCEPTION_METRICS, SampleScorer, check_not_text_conditional,
                             load_evaluator_for, parse_metrics, reference_images)
    from .models.network import check_image_model
    check_image_model(denoiser.meta["unet"], "a sample-metric table")  # before asking for an evaluator
    names = parse_metrics(metric)
    if len(names) != 1 or names[0] in NLL_METRICS:
        raise DiffkitError(f"metric={metric!r} is not allowed; a table takes one sample metric "
                           f"(fd-classifier, classifier-score, confidence, fid, is, kid, pr, class-accuracy)")
    inception = net = None
    if names[0] in INCEPTION_METRICS:
        from .metrics import load_inception
        inception = load_inception(inception_weights, device=device)
    if names[0] in EVALUATOR_METRICS:
        net = load_evaluator_for(evaluator, device)
    check_not_text_conditional(denoiser, "the checkpoint")
    cfg = denoiser.meta.get("config", {})
    if ref is None:
        ref, data_dir = cfg.get("dataset", "digits"), data_dir or cfg.get("data_dir")
    channels, size = image_shape(denoiser)  # a latent model's: the decoded images'
    reference, _ = reference_images(ref, data_dir, train=False, img_size=size, channels=channels, limit=ref_num)
    return SampleScorer(names, reference, evaluator=net, inception=inception, batch_size=batch_size, device=device)
