"""``tlkit audit``: the command (registered on the group in :mod:`tlkit.cli.commands`).

It checks the data, the config and the files it will write before any framework is loaded, calls
:func:`tlkit.auditing.audit`, prints a one-screen summary (or the JSON), and writes the page and the fixed split.
"""

from __future__ import annotations

import dataclasses

import click

from tlkit.auditing.findings import AuditResult, AuditSettings
from tlkit.cli.checks import early_checks
from tlkit.cli.parsing import build_config, config_file_option, config_options, progress_to_stderr, quiet_option, start

#: The audit's default thresholds (:class:`~tlkit.auditing.findings.AuditSettings`), shown by ``--help``.
DEFAULTS = {field.name: field.default for field in dataclasses.fields(AuditSettings)}


@click.command()
@early_checks(data="data", html="output", fix_split="output", config=True)
@click.argument("data", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print every finding as JSON (path, kind, score, evidence, "
                                                       "suggestion) instead of the summary.")
@click.option("--html", type=click.Path(dir_okay=False), help="Also write a self-contained HTML page of the findings, "
                                                              "with thumbnails.")
@click.option("--fix-split", type=click.Path(dir_okay=False),
              help="Also write a labels CSV (path, label, split) whose split keeps every group of duplicates on one "
                   "side; train on it with --labels. No image is moved.")
@click.option("--near-duplicate", type=click.FloatRange(0, 1), default=DEFAULTS["near_duplicate"], show_default=True,
              help="Cosine similarity of pooled VGG16 features from which two images are near duplicates.")
@click.option("--near-pixels", type=click.FloatRange(0, 1), default=DEFAULTS["near_pixels"], show_default=True,
              help="Correlation of 16x16 grayscale thumbnails (or one mirrored, or an 80-90% crop) from which two "
                   "images are near duplicates too.")
@click.option("--outlier-score", type=click.FloatRange(min=0), default=DEFAULTS["outlier_score"], show_default=True,
              help="Robust standard deviations below every class's typical similarity that make an outlier.")
@click.option("--look-score", type=click.FloatRange(min=0), default=DEFAULTS["look_score"], show_default=True,
              help="Robust standard deviations of an image's look (VGG16's first blocks' texture statistics) from its "
                   "class's others that make an outlier too.")
@click.option("--label-floor", type=click.FloatRange(0, 1), default=DEFAULTS["label_floor"], show_default=True,
              help="Label errors: flag an image whose likeliest class is another when its given label's out-of-fold "
                   "probability is at most this.")
@click.option("--folds", type=click.IntRange(min=2), default=DEFAULTS["folds"], show_default=True,
              help="Folds of the out-of-fold heads whose probabilities find likely label errors.")
@config_options(("labels", "image_size", "val_split", "test_split", "seed", "workers", "cache_dir", "weights",
                 "epochs", "batch_size", "optimizer", "learning_rate", "head_units", "dropout", "precision"))
@config_file_option
@quiet_option
def audit(*, data: str, as_json: bool, html: str | None, fix_split: str | None, near_duplicate: float,
          near_pixels: float, outlier_score: float, look_score: float, label_floor: float, folds: int,
          config_file: str | None, quiet: bool, **options) -> None:
    """Find what is wrong with DATA before it costs accuracy: exact and near duplicates (leaks across splits),
    likely label errors, outliers, odd files and class balance, from its cached features. Nothing is moved."""
    config = build_config(config_file, options)
    start(quiet)
    from tlkit.auditing.auditor import audit as audit_data

    settings = AuditSettings(near_duplicate=near_duplicate, near_pixels=near_pixels, outlier_score=outlier_score,
                             look_score=look_score, label_floor=label_floor, folds=folds)
    with progress_to_stderr():
        result = audit_data(data, config, settings, verbose=0 if quiet or as_json else 1)
    written = []
    if html:
        from tlkit.auditing.page import write_page

        written.append(f"page: {write_page(result, html)}")
    if fix_split:
        from tlkit.auditing.fix import write_fixed_split

        moved = write_fixed_split(result, fix_split)
        written.append(f"fixed split: {fix_split} ({moved} image(s) moved; train with --labels {fix_split})")
    if as_json:
        from tlkit.outputs import json_text

        click.echo(json_text(result.to_dict(), "the audit's JSON"), nl=False)
        for line in written:
            click.echo(line, err=True)
        return
    for line in summary(result):
        click.echo(line)
    for line in written:
        click.echo(line)


def summary(result: AuditResult) -> list[str]:
    """The console summary: counts per kind with the worst few named, leaks, balance."""
    images = ", ".join(f"{count} {split}" for split, count in result.images.items())
    lines = [f"{result.data}: {sum(result.images.values())} images ({images}), {len(result.class_names)} classes"]
    for kind, count in result.counts().items():
        found = result.of_kind(kind)
        flags = ""
        if kind in ("exact_duplicate", "near_duplicate") and found:
            flags = (f" ({sum(f.evidence['leak'] for f in found)} across splits, "
                     f"{sum(f.evidence['conflict'] for f in found)} with different labels)")
        lines.append(f"{kind.replace('_', ' ')}: {result.unchecked.get(kind, count)}{flags}")
        for finding in found[:result.settings.worst]:
            names = ", ".join(result.relative(path) for path in finding.paths[:4])
            more = f" +{len(finding.paths) - 4}" if len(finding.paths) > 4 else ""
            lines.append(f"  {names}{more}: {finding.suggestion}")
    lines += [f"leak: {note}" for split, note in result.leak_notes().items() if result.leaked[split]]
    advice = "train with --class-weight auto" if result.advise_class_weight else "balanced"
    smallest = min(result.balance, key=lambda name: sum(result.balance[name].values()))
    largest = max(result.balance, key=lambda name: sum(result.balance[name].values()))
    lines.append(f"balance: largest class {largest} / smallest {smallest} = {result.imbalance_ratio:.2f} ({advice})")
    lines.append(f"time: {sum(result.seconds.values()):.1f} s ("
                 + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in result.seconds.items()) + ")")
    return lines
