"""How command results are printed on stdout: an evaluation's tables, a prediction's line."""

from __future__ import annotations

from typing import Any

import click

from tlkit.intervals import interval_text


def prediction_line(prediction: Any) -> str:
    """``path: label p, label p...``: the top k classes, or a multi-label run's predicted labels."""
    if prediction.labels is not None:
        chosen = dict(prediction.top_k)
        if not prediction.labels:
            top, p = prediction.top_k[0]
            return f"{prediction.path}: no label reaches its threshold (most probable: {top} {p:.4f})"
        return f"{prediction.path}: " + ", ".join(f"{name} {chosen[name]:.4f}" for name in prediction.labels)
    return f"{prediction.path}: " + ", ".join(f"{label} {p:.4f}" for label, p in prediction.top_k)


def show_evaluation(report: Any) -> None:
    """An evaluation as tables (``tlkit evaluate``): a multi-label one per label, else per class with the
    confusion matrix (or its most frequent confusions), then the most confident mistakes."""
    if getattr(report, "multi_label", False):
        show_multilabel_evaluation(report)
        return
    views = f", {report.tta} views each" if report.tta > 1 else ""
    click.echo(f"{report.data} [{report.split}]: {report.count} images{views}")
    top_5 = "" if report.top_5_accuracy is None else f"  top-5 accuracy: {report.top_5_accuracy:.4f}"
    click.echo(f"loss: {report.loss:.4f}  accuracy: {report.accuracy:.4f} ({interval_text(report.accuracy, report.count)})"
               f"{top_5}")
    if report.caveat:
        click.echo(f"note: {report.caveat}")
    width = max(len(name) for name in [*report.per_class, "weighted avg"])
    click.echo(f"{'class':<{width}}  precision  recall     f1  support")
    rows = [*report.per_class.items(), ("macro avg", {**report.macro_avg, "support": report.count}),
            ("weighted avg", {**report.weighted_avg, "support": report.count})]
    for name, row in rows:
        click.echo(f"{name:<{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:6.4f} "
                   f"{row['support']:8d}")
    from tlkit.plots import LABELLED_CLASSES, top_confusions

    if len(report.class_names) <= LABELLED_CLASSES:
        click.echo("confusion matrix (rows: true, columns: predicted):")
        for name, counts in zip(report.class_names, report.confusion_matrix):
            click.echo(f"{name:<{width}}  " + " ".join(f"{n:6d}" for n in counts))
    else:  # a line of a number per class for every class would grow with the square of the classes
        click.echo(f"most frequent confusions (the whole matrix of {len(report.class_names)} classes: --json):")
        for true, predicted, images, share in top_confusions(report.confusion_matrix, report.class_names):
            click.echo(f"  {true} taken for {predicted}: {images} image(s), {share:.1%} of {true}")
    if report.top_losses:
        click.echo("most confident mistakes:")
    for mistake in report.top_losses:
        click.echo(f"  {mistake['path']}: {mistake['true']} taken for {mistake['predicted']} "
                   f"({mistake['probability']:.4f}, loss {mistake['loss']:.4f})")


def show_multilabel_evaluation(report: Any) -> None:
    """A multi-label evaluation: the overall figures, a row per label, the images decided worst."""
    views = f", {report.tta} views each" if report.tta > 1 else ""
    click.echo(f"{report.data} [{report.split}]: {report.count} images{views}, {len(report.class_names)} labels")
    click.echo(f"loss: {report.loss:.4f}  subset accuracy: {report.accuracy:.4f} "
               f"({interval_text(report.accuracy, report.count)})  micro F1: {report.micro_f1:.4f}  "
               f"macro F1: {report.macro_f1:.4f}  mAP: {report.mean_average_precision:.4f}")
    if report.caveat:
        click.echo(f"note: {report.caveat}")
    width = max(len(name) for name in [*report.per_label, "label"])
    click.echo(f"{'label':<{width}}  precision  recall     f1      AP  threshold  support")
    for name, row in report.per_label.items():
        click.echo(f"{name:<{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:6.4f} "
                   f"{row['average_precision']:7.4f} {row['threshold']:10.4f} {row['support']:8d}")
    if report.top_losses:
        click.echo("images decided worst:")
    for image in report.top_losses:
        click.echo(f"  {image['path']}: labelled {';'.join(image['true']) or '(none)'}, predicted "
                   f"{';'.join(image['predicted']) or '(none)'} (loss {image['loss']:.4f})")
