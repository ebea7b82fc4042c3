"""The ``tlkit`` commands: options -> config -> library call -> printed result.

Nothing here decides anything the library would not: each command parses (:mod:`tlkit.cli.parsing`),
calls one library function, and prints what it returns. Machine-learning modules are imported inside
the commands, so ``tlkit --help``, ``--version`` and a mistyped option load no framework.
"""

from __future__ import annotations

import json

import click

from tlkit import config as cfg
from tlkit.cli.checks import early_checks, legacy_run_argument
from tlkit.cli.parsing import (TlkitGroup, build_config, config_file_option, config_options, debug_option,
                               given_options, labels_option, progress_to_stderr, quiet_option, run_option, start,
                               tta_option)
from tlkit.cli.audit_command import audit
from tlkit.cli.tune_command import tune
from tlkit.intervals import interval_text

EXTRACT_OPTIONS = ("labels", "label_separator", "label_columns", "image_size", "seed", "workers", "cache_dir", "weights",
                   "batch_size", "precision", "distribute", *cfg.COPY_OPTIONS)


@click.group(cls=TlkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlkit")
@debug_option
def main() -> None:
    """Transfer-learning image classifiers on a pretrained VGG16, from a folder of images per class."""


@main.command()
@early_checks(data="data", config=True)
@click.argument("data", type=click.Path())
@config_options(EXTRACT_OPTIONS)
@config_file_option
@quiet_option
def extract(data: str, config_file: str | None, quiet: bool, **options) -> None:
    """Extract and cache VGG16 features of every image in DATA (reused while nothing changed)."""
    start(quiet, framework=False)  # unchanged data is answered from the cache manifests alone
    from tlkit.features import extract as extract_features

    with progress_to_stderr():
        features = extract_features(data, build_config(config_file, options), verbose=0 if quiet else 1)
    state = "reused" if features.reused else "written"
    click.echo(f"features {state}: {features.path} ({len(features.skipped)} file(s) skipped)")


@main.command()
@early_checks(from_run="source_run", data="data", config=True)
@click.argument("data", type=click.Path())
@config_options()
@config_file_option
@click.option("--run-dir", type=click.Path(file_okay=False), help="Folder of the new run [default: runs/<time>-<mode>].")
@click.option("--from", "from_run", type=click.Path(), help="finetune: start from this run's model.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --run-dir (default: the latest under runs/) after its last "
                   "finished epoch; with nothing to resume there, start it.")
@click.option("--new", "fresh", is_flag=True,
              help="Start a new run even if runs/ holds an interrupted run of the same data and settings (which "
                   "the same command otherwise continues).")
@click.option("--tensorboard", type=click.Path(file_okay=False),
              help="Write TensorBoard logs here (a subfolder per phase: losses, accuracy, learning rate).")
@quiet_option
def train(data: str, config_file: str | None, run_dir: str | None, from_run: str | None, resume: bool,
          quiet: bool, *, fresh: bool, tensorboard: str | None, **options) -> None:
    """Train a classifier on DATA and save the run (every epoch is checkpointed: rerun the same command, or see
    --resume)."""
    if resume and fresh:
        raise click.UsageError("--resume continues a run, --new starts one: give one of them")
    start(quiet)
    from tlkit.training.pipeline import train as train_model

    # resuming without a config file: the run's own settings, the flags given now over them (they must agree)
    config = cfg.load_config(config_file) if config_file else None if resume else cfg.Config()
    # neither flag: an interrupted run under runs/ of the same data and settings is continued
    with progress_to_stderr():
        result = train_model(data, config, run_dir=run_dir, from_run=from_run, verbose=0 if quiet else 1,
                             resume=True if resume else False if fresh else None, changes=given_options(options),
                             tensorboard=tensorboard)
    metrics = result.metrics
    click.echo(f"run: {result.run_dir or 'written by process 0 of the job'}")
    images = metrics["images"]
    if "val_micro_f1" in metrics:  # multi-label
        click.echo(f"val_micro_f1: {metrics['val_micro_f1']:.4f}  val_macro_f1: {metrics['val_macro_f1']:.4f}  val_mAP: "
                   f"{metrics['val_mean_average_precision']:.4f}  val_subset_accuracy: "
                   f"{metrics['val_subset_accuracy']:.4f} ({interval_text(metrics['val_subset_accuracy'], images['val'])})"
                   f"  val_loss: {metrics['val_loss']:.4f}")
    else:
        top_5 = f"  val_top_5_accuracy: {metrics['val_top_5_accuracy']:.4f}" if "val_top_5_accuracy" in metrics else ""
        click.echo(f"val_accuracy: {metrics['val_accuracy']:.4f} ({interval_text(metrics['val_accuracy'], images['val'])})"
                   f"  val_loss: {metrics['val_loss']:.4f}{top_5}")
        if "test_accuracy" in metrics:
            click.echo(f"test_accuracy: {metrics['test_accuracy']:.4f} "
                       f"({interval_text(metrics['test_accuracy'], images['test'])})  test_loss: {metrics['test_loss']:.4f}")
    click.echo(f"note: {metrics['trust']}")


@main.command()
@early_checks(run_dir="run", paths="inputs", out="output")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@run_option
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of predictions.")
@click.option("--batch-size", type=click.IntRange(min=1), default=cfg.PREDICT_BATCH, show_default=True,
              help="Images decoded and predicted at a time (memory does not grow with the number of images).")
@tta_option
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Multi-label runs: predict each label whose probability reaches this [default: the run's "
                   "thresholds, 0.5 unless tuned with --tune-thresholds].")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write every prediction (all class probabilities) to this .csv or .jsonl file as it comes, "
                   "instead of printing; rerun the same command to finish an interrupted one.")
@click.option("--overwrite", is_flag=True,
              help="With --out: start the file afresh when it holds predictions (of another run, say) instead of "
                   "continuing it; a file that is not tlkit results is never overwritten.")
@quiet_option
def predict(*, paths: tuple[str, ...], run_dir: str | None, top_k: int, as_json: bool, batch_size: int, tta: int,
            threshold: float | None, out: str | None, overwrite: bool, quiet: bool) -> None:
    """Predict the class of each image in PATHS (files or folders), printing each as it comes."""
    if overwrite and out is None:
        raise click.UsageError("--overwrite applies to the file of --out; give --out FILE")
    if out is not None and as_json:
        raise click.UsageError("--json prints predictions, --out writes them to a file: give one of them")
    start(quiet)
    if out is not None:
        from tlkit.inference.prediction_file import predict_to_file

        with progress_to_stderr():
            counts = predict_to_file(list(paths), out, run_dir, batch_size, tta, progress=not quiet,
                                     overwrite=overwrite)
        click.echo(f"{out}: {counts['predicted']} image(s) predicted, {counts['unreadable']} unreadable, "
                   f"{counts['already']} already there")
        return
    from tlkit.cli.printing import prediction_line
    from tlkit.inference.predict import iter_predictions

    # bad paths and runs fail here, before any output
    predictions = iter_predictions(list(paths), run_dir, top_k, batch_size, tta, threshold)
    first = True
    for prediction in predictions:  # printed as they come: an interrupted run keeps what it printed
        if as_json:
            text = json.dumps(prediction.to_dict(), ensure_ascii=False, allow_nan=False)  # NaN is not JSON
            click.echo(("[\n" if first else ",\n") + text, nl=False)
        else:
            click.echo(prediction_line(prediction))
        first = False
    if as_json:
        click.echo("\n]")


@main.command()
@early_checks(run_dir="run", data="data", labels="labels", confusion_png="output")
@click.argument("data", required=False, type=click.Path())
@run_option
@click.option("--split", type=click.Choice(("train", "val", "test", "all")),
              help="Which images [default: test if any, else val; all for a plain folder given as DATA].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--top-losses", "mistakes", type=click.IntRange(min=0), default=cfg.TOP_LOSSES, show_default=True,
              help="How many of the most confident mistakes to list.")
@click.option("--confusion", "confusion_png", type=click.Path(dir_okay=False),
              help="Also draw the confusion matrix (counts and row-normalised) into this PNG.")
@tta_option
@labels_option
@quiet_option
def evaluate(*, data: str | None, run_dir: str | None, split: str | None, as_json: bool, mistakes: int,
             confusion_png: str | None, tta: int, labels: str | None, quiet: bool) -> None:
    """Score a run on labelled images in DATA (default: the run's own data)."""
    start(quiet)
    from tlkit.inference.evaluate import evaluate as evaluate_run

    with progress_to_stderr():
        report = evaluate_run(data, run_dir, split, verbose=0 if quiet or as_json else 1, mistakes=mistakes, tta=tta,
                              labels=labels)
    if confusion_png:
        from tlkit.plots import plot_confusion

        plot_confusion(report.confusion_matrix, report.class_names, confusion_png)
        click.echo(f"confusion matrix: {confusion_png}", err=as_json)  # stdout holds only the JSON
    if as_json:
        from tlkit.outputs import json_text

        click.echo(json_text(report.to_dict(), "the evaluation"), nl=False)  # never NaN: not JSON
        return
    from tlkit.cli.printing import show_evaluation

    show_evaluation(report)


@main.command()
@early_checks(data="data", config=True)
@click.argument("data", type=click.Path())
@click.option("--folds", type=click.IntRange(min=2), default=cfg.CV_FOLDS, show_default=True,
              help="K: the train and validation images, pooled, are dealt into K stratified folds, each held out once.")
@click.option("--repeats", type=click.IntRange(min=1), default=cfg.CV_REPEATS, show_default=True,
              help="Deal the K folds this many times, shuffled anew each time (iterated K-fold).")
@config_options(("labels", "image_size", "test_split", "seed", "workers", "cache_dir", "weights", "epochs",
                 "batch_size", "optimizer", "learning_rate", "lr_schedule", "lr_warmup_epochs", "lr_floor", "lr_drop",
                 "lr_drop_every", "lr_patience", "label_smoothing", "l2", "pooling", "head_units", "dropout",
                 "precision", "class_weight", "distribute", *cfg.COPY_OPTIONS))
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, every fold's epoch logs included.")
@quiet_option
def cv(data: str, folds: int, repeats: int, config_file: str | None, as_json: bool, quiet: bool, **options) -> None:
    """Cross-validate the dense head on DATA's cached features: stratified K-fold, optionally repeated."""
    start(quiet)
    from tlkit.training.cv import cross_validate

    with progress_to_stderr():
        result = cross_validate(data, build_config(config_file, options), folds, repeats,
                                verbose=0 if quiet or as_json else 1)
    if as_json:
        from tlkit.outputs import json_text

        click.echo(json_text(result.to_dict(), "the cross-validation's JSON"), nl=False)  # never NaN
        return
    click.echo(f"{data}: {result.images} train and validation images ({', '.join(result.class_names)}), "
               f"{folds} folds x {repeats} repeat(s)")
    for repeat, mean in enumerate(result.repeat_accuracy):
        scores = " ".join(f"{fold['val_accuracy']:.4f}" for fold in result.fold_results if fold["repeat"] == repeat)
        click.echo(f"repeat {repeat + 1}: {scores}  mean {mean:.4f}")
    click.echo(f"val_accuracy: {result.mean_accuracy:.4f} +/- {result.std_accuracy:.4f} (mean +/- std of "
               f"{folds * repeats} folds)  val_loss: {result.mean_loss:.4f}")
    low, high = result.accuracy_ci95
    click.echo(f"95% CI of the held-out accuracy: {low:.3f}-{high:.3f} ({result.images} images, each held out once "
               "per repeat)")
    best = result.best_epoch - 1
    click.echo(f"best_epoch: {best + 1} of {len(result.epoch_val_loss)} (lowest mean val_loss "
               f"{result.epoch_val_loss[best]:.4f}, mean val_accuracy {result.epoch_val_accuracy[best]:.4f})")
    if result.skipped:
        click.echo(f"skipped: {len(result.skipped)} file(s) (see the warnings)")


main.add_command(tune)  # tlkit tune and tlkit audit: declared in their own modules (this one is at its length limit)
main.add_command(audit)


@main.command()
@early_checks(run_dir="run", out="output")
@legacy_run_argument
@run_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PNG to write.")
@click.option("--smoothing", type=click.FloatRange(0, 1, max_open=True), default=cfg.CURVE_SMOOTHING,
              show_default=True, help="Factor of the exponential moving average drawn over the raw values.")
def curves(run_dir: str | None, out: str, smoothing: float) -> None:
    """Draw a run's learning curves (default: the latest run under runs/), smoothed as you choose."""
    from tlkit.plots import plot_curves
    from tlkit.runs import read_history

    plot_curves(read_history(run_dir), out, smoothing)
    click.echo(f"curves: {out}")


@main.command()
@early_checks(run_dir="run", image="image", out="output")
@click.argument("image", type=click.Path())
@run_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PNG to write: the heatmap over the image.")
@click.option("--class", "class_name", help="Class whose evidence is shown [default: the predicted one].")
@click.option("--opacity", type=click.FloatRange(0, 1), default=cfg.CAM_OPACITY, show_default=True,
              help="Opacity of the heatmap over the image.")
@quiet_option
def explain(image: str, run_dir: str | None, out: str, class_name: str | None, opacity: float, quiet: bool) -> None:
    """Grad-CAM: draw where in IMAGE the run's classifier sees the evidence for a class."""
    start(quiet)
    from tlkit.inference.explain import explain as explain_image, write_overlay

    explanation = explain_image(image, run_dir, class_name)
    write_overlay(explanation, out, opacity)
    click.echo(f"{out}: evidence for {explanation.class_name} (probability {explanation.probability:.4f}; "
               f"predicted: {explanation.predicted})")


@main.command()
@early_checks(run_dir="run", data="data", labels="labels", out="output")
@legacy_run_argument
@run_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@click.option("--data", type=click.Path(), help="Labelled images to evaluate on [default: the run's own data].")
@click.option("--split", type=click.Choice(("train", "val", "test", "all")),
              help="Which images [default: as tlkit evaluate].")
@click.option("--top-losses", "mistakes", type=click.IntRange(min=0), default=cfg.TOP_LOSSES, show_default=True,
              help="How many of the most confident mistakes the gallery shows.")
@tta_option
@labels_option
@quiet_option
def report(*, run_dir: str | None, out: str, data: str | None, split: str | None, mistakes: int, tta: int,
           labels: str | None, quiet: bool) -> None:
    """Write one self-contained HTML page about a run (default: the latest under runs/): settings, curves,
    metrics, confusion matrix, its worst mistakes with Grad-CAM, skipped files."""
    start(quiet)
    from tlkit.report import write_report

    with progress_to_stderr():
        evaluation = write_report(out, run_dir, data, split, mistakes=mistakes, tta=tta, verbose=0 if quiet else 1,
                                  labels=labels)
    click.echo(f"report: {out} (accuracy {evaluation.accuracy:.4f} on {evaluation.count} images, "
               f"{len(evaluation.top_losses)} mistake(s) shown)")


@main.command()
@early_checks(run_dir="run")
@legacy_run_argument
@run_option
@click.option("--format", "fmt", required=True, type=click.Choice(("savedmodel", "tflite", "onnx")),
              help="savedmodel (a folder) and tflite need the TensorFlow backend; onnx TensorFlow or PyTorch.")
@click.option("--out", required=True, type=click.Path(),
              help="The SavedModel folder, or the .tflite or .onnx file (plus <out>.json) to write; never overwritten.")
@quiet_option
def export(run_dir: str | None, fmt: str, out: str, quiet: bool) -> None:
    """Export a run's classifier (default: the latest under runs/) for use without tlkit: raw RGB pixels in,
    class probabilities out, class names inside."""
    start(quiet)
    from tlkit.deploy import export as export_run, read_contract

    path = export_run(run_dir, fmt, out)
    contract = read_contract(path)
    click.echo(f"{fmt}: {path} (input {contract['input']['name']} float32 (batch, {contract['image_size']}, "
               f"{contract['image_size']}, 3) RGB 0-255; output {contract['output']['name']}: "
               f"{', '.join(contract['class_names'])})")

