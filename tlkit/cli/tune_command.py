"""``tlkit tune``: the command (registered on the group in :mod:`tlkit.cli.commands`, which is at its length limit).

It checks the ``[tune]`` table of ``--config``, the output folder and the time budget before any framework
is loaded, calls :func:`tlkit.training.tune.tune`, and prints its ranked table.
"""

from __future__ import annotations

import click

from tlkit.cli.checks import early_checks
from tlkit.cli.parsing import build_config, config_file_option, config_options, progress_to_stderr, quiet_option, start
from tlkit.errors import TlkitError
from tlkit.outputs import check_output
from tlkit.training.tune_space import (ALGORITHMS, DEFAULT_SPACE, SCORED_SETTINGS, TUNE_DIR, TUNE_FOLDS, TUNE_TRIALS,
                                       check_space, parse_duration, read_table)

#: Rows of the ranked table printed at the end of a search (tune.json holds every trial).
TABLE_ROWS = 10


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_duration(value)
    except TlkitError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@early_checks(data="data", config=True)
@click.argument("data", type=click.Path())
@click.option("--trials", type=click.IntRange(min=1), default=TUNE_TRIALS, show_default=True,
              help="Trials of the whole search: a rerun continues up to this many.")
@click.option("--folds", type=click.IntRange(min=2), default=TUNE_FOLDS, show_default=True,
              help="K: each trial is scored by stratified K-fold of the train and validation images, pooled.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="random", show_default=True,
              help="KerasTuner's random search, or its Bayesian optimisation (needs scikit-learn).")
@click.option("--time-budget", callback=_duration, metavar="DURATION",
              help="Start no trial after this long (seconds, or 30m, 2h): the finished trials are reported; rerun "
                   "to continue.")
@click.option("--out", type=click.Path(file_okay=False), default=TUNE_DIR, show_default=True,
              help="Folder of the search (rerun the same command to continue it): tune.json, best.toml.")
@config_options((*SCORED_SETTINGS, "workers", "cache_dir", "distribute"))
@config_file_option
@quiet_option
def tune(*, data: str, trials: int, folds: int, algorithm: str, time_budget: float | None, out: str,
         config_file: str | None, quiet: bool, **options) -> None:
    """Search the dense head's hyperparameters (the [tune] table of --config, or the default ranges) on DATA's
    cached features, scoring each trial by K-fold; the best settings go to OUT/best.toml."""
    config = build_config(config_file, options)
    table = read_table(config_file)
    space = check_space(DEFAULT_SPACE if table is None else table, config)
    check_output(out, folder=True)
    start(quiet)
    from tlkit.training.tune import STOPS, format_value, tune as tune_head

    with progress_to_stderr():
        result = tune_head(data, config, space=space, trials=trials, folds=folds, algorithm=algorithm, out=out,
                           time_budget=time_budget, verbose=0 if quiet else 1)
    click.echo(f"{out}: {len(result.trials)} of {trials} trial(s) finished, {result.ran} in this run "
               f"({algorithm} search, {folds} folds); {STOPS[result.stopped]}")
    by_number = {trial["number"]: trial for trial in result.trials}
    rows = [["rank", "trial", "val_loss", "val_accuracy", *space]]
    for rank, number in enumerate(result.ranking[:TABLE_ROWS], 1):
        trial = by_number[number]
        rows.append([str(rank), str(number), f"{trial['val_loss']:.4f} +/- {trial['val_loss_std']:.4f}",
                     f"{trial['val_accuracy']:.4f} +/- {trial['val_accuracy_std']:.4f}{_interval(trial)}",
                     *(format_value(trial["hyperparameters"][name]) for name in space)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows if result.ranking else []:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    failed = len(result.trials) - len(result.ranking)
    if failed:
        click.echo(f"failed: {failed} trial(s), whose loss was not finite (see {out}/tune.json)")
    if result.best_config is not None:
        click.echo(f"best settings: {result.best_config} (tlkit train {data} --config {result.best_config})")


def _interval(trial: dict) -> str:
    """`` (95% CI low-high)`` of a trial's pooled held-out accuracy ("" in a search recorded before tlkit gave it)."""
    interval = trial.get("val_accuracy_ci95")
    return f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
