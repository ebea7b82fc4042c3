"""The ``tlkit`` command line: options -> config -> library call -> printed result.

Every config option is a flag named after its field (``--image-size``, ``--rotation-range``,
``--learning-rate``...) whose default comes from :mod:`tlkit.config`. Precedence:
defaults < ``--config FILE`` < flags given on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

import click

from tlkit import config as cfg
from tlkit.errors import TlkitError

log = logging.getLogger("tlkit")

#: One-line help of each config option (the default is shown beside it).
OPTION_HELP = {
    "image_size": "Side of the square images are resized to.",
    "val_split": "Validation fraction per class, for a folder without its own split.",
    "test_split": "Test fraction per class, for a folder without its own split.",
    "seed": "Seed of the split, shuffling, augmentation and initialisation.",
    "workers": "Threads decoding images.",
    "cache_dir": "Folder of the feature cache (or set TLKIT_CACHE).",
    "rotation_range": "Random rotation, degrees (+/-).",
    "width_shift_range": "Random horizontal shift, fraction of the width (pixels if >= 1).",
    "height_shift_range": "Random vertical shift, fraction of the height (pixels if >= 1).",
    "shear_range": "Random shear angle, degrees (+/-).",
    "zoom_range": "Random zoom in [1 - z, 1 + z], x and y independently.",
    "horizontal_flip": "Flip half of the images left-right.",
    "fill_mode": "How points outside the image are filled.",
    "mode": "features: head on cached features; frozen: end to end, base frozen; finetune: then unfreeze.",
    "weights": "VGG16 weights: imagenet, none, or a weights file (default from TLKIT_WEIGHTS when set).",
    "epochs": "Most epochs of the main phase.",
    "warmup_epochs": "Most epochs of finetune's head warm-up.",
    "warmup_mode": "How finetune warms up its head.",
    "batch_size": "Images per step.",
    "optimizer": "Optimizer (sgd uses momentum 0.9).",
    "learning_rate": "Learning rate of the head.",
    "finetune_learning_rate": "Learning rate once the base is unfrozen.",
    "unfreeze_from": "First VGG16 layer that finetune trains (it and all above).",
    "pooling": "Feature map to vector: global average or flatten.",
    "head_units": "Width of the dense hidden layer.",
    "dropout": "Dropout rate before the output layer.",
    "patience": "Epochs without a better val_loss before stopping; 0: never stop early.",
    "augment_on": "Augment inside the training step (device) or with the classic ImageDataGenerator (cpu).",
    "precision": "Compute precision; mixed types keep the output layer float32.",
    "class_weight": "auto: weigh each class inversely to its number of training images (imbalanced data).",
    "distribute": "Devices: auto (every accelerator when there are several), none (one), mirrored (every device "
                  "here), multiworker (one process per machine, JAX; see README).",
}
CHOICES = {"mode": cfg.MODES, "optimizer": cfg.OPTIMIZERS, "pooling": cfg.POOLINGS,
           "fill_mode": cfg.FILL_MODES, "warmup_mode": cfg.WARMUP_MODES, "augment_on": cfg.AUGMENT_ON,
           "precision": cfg.PRECISIONS, "class_weight": cfg.CLASS_WEIGHTS, "distribute": cfg.DISTRIBUTE}
EXTRACT_OPTIONS = ("image_size", "seed", "workers", "cache_dir", "weights", "batch_size", "precision", "distribute")


class OneLineUsageError(click.ClickException):
    """A bad option or argument, said in one line (click's usage text would add several); exit code 2."""

    exit_code = 2


class TlkitGroup(click.Group):
    """A click group whose errors are one ``Error:`` line: exit code 1 for tlkit's, 2 for bad usage."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} -h)" if exc.ctx is not None else ""
            raise OneLineUsageError(" ".join(exc.format_message().split()) + where) from None
        except TlkitError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None  # one line, whatever it quotes
        except BrokenPipeError:  # the reader left (`tlkit predict DIR | head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
            raise click.exceptions.Exit(1) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


def _field_default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def config_options(names: tuple[str, ...] | None = None):
    """Decorator adding one flag per config field (all, or those in ``names``); unset flags stay ``None``."""

    def decorate(command):
        for section in reversed(list(cfg.SECTIONS.values())):
            for field in reversed(dataclasses.fields(section)):
                if names is not None and field.name not in names:
                    continue
                flag = field.name.replace("_", "-")
                default = _field_default(field)
                if field.type == "bool":
                    decls, kind = [f"--{flag}/--no-{flag}"], None
                else:
                    decls = [f"--{flag}"]
                    kind = click.Choice(CHOICES[field.name]) if field.name in CHOICES else {
                        "int": int, "float": float}.get(field.type, str)
                command = click.option(*decls, field.name, type=kind, default=None,
                                       help=f"{OPTION_HELP[field.name]}  [default: {default}]")(command)
        return command

    return decorate


def build_config(config_file: str | None, options: dict, base: cfg.Config | None = None) -> cfg.Config:
    """Defaults (or ``base``), then the config file, then the flags that were given."""
    base = cfg.load_config(config_file) if config_file else base or cfg.Config()
    sections: dict[str, dict] = {}
    for name, section in cfg.SECTIONS.items():
        given = {f.name: options[f.name] for f in dataclasses.fields(section) if options.get(f.name) is not None}
        if given:
            sections[name] = given
    return base.replace(**sections)


def one_machine(config: cfg.Config) -> cfg.Config:
    """``config``, refused when it asks for several machines: only ``tlkit train`` spreads over them."""
    if config.train.distribute == "multiworker":
        raise click.UsageError("--distribute multiworker is for tlkit train (each machine would repeat the "
                               "whole job); here use mirrored for every device of this machine")
    return config


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. tf.function retracing notes


config_file_option = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                                  help="JSON or TOML file of options (a run's config.json reproduces it).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
run_option = click.option("--run", "run_dir", type=click.Path(), help="Run folder [default: the latest under runs/].")
tta_option = click.option("--tta", type=click.IntRange(min=1), default=1, show_default=True,
                          help="Average the probabilities of this many views of each image: itself, mirrored, "
                               "then shifted (up to 18; 1: the image alone).")


@click.group(cls=TlkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlkit")
def main() -> None:
    """Transfer-learning image classifiers on a pretrained VGG16, from a folder of images per class."""


@main.command()
@click.argument("data", type=click.Path())
@config_options(EXTRACT_OPTIONS)
@config_file_option
@quiet_option
def extract(data: str, config_file: str | None, quiet: bool, **options) -> None:
    """Extract and cache VGG16 features of every image in DATA (reused while nothing changed)."""
    _setup_logging(quiet)
    from tlkit.features import extract as extract_features

    features = extract_features(data, one_machine(build_config(config_file, options)), verbose=0 if quiet else 1)
    state = "reused" if features.reused else "written"
    click.echo(f"features {state}: {features.path} ({len(features.skipped)} file(s) skipped)")


@main.command()
@click.argument("data", type=click.Path())
@config_options()
@config_file_option
@click.option("--run-dir", type=click.Path(file_okay=False), help="Folder of the new run [default: runs/<time>-<mode>].")
@click.option("--from", "from_run", type=click.Path(), help="finetune: start from this run's model.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --run-dir (default: the latest under runs/) after its last "
                   "finished epoch; with nothing to resume there, start it.")
@quiet_option
def train(data: str, config_file: str | None, run_dir: str | None, from_run: str | None, resume: bool,
          quiet: bool, **options) -> None:
    """Train a classifier on DATA and save the run (every epoch is checkpointed: see --resume)."""
    _setup_logging(quiet)
    from tlkit.resume import find_interrupted_run, saved_config
    from tlkit.train import train as train_model

    saved = None
    if resume:
        run_dir = run_dir or str(find_interrupted_run())
        saved = saved_config(run_dir)  # the run's own settings; flags given now must agree with them
    result = train_model(data, build_config(config_file, options, saved), run_dir=run_dir, from_run=from_run,
                         verbose=0 if quiet else 1, resume=resume)
    metrics = result.metrics
    click.echo(f"run: {result.run_dir or 'written by process 0 of the job'}")
    click.echo(f"val_accuracy: {metrics['val_accuracy']:.4f}  val_loss: {metrics['val_loss']:.4f}")
    if "test_accuracy" in metrics:
        click.echo(f"test_accuracy: {metrics['test_accuracy']:.4f}  test_loss: {metrics['test_loss']:.4f}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@run_option
@click.option("--top-k", type=click.IntRange(min=1), default=1, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of predictions.")
@click.option("--batch-size", type=click.IntRange(min=1), default=cfg.PREDICT_BATCH, show_default=True,
              help="Images decoded and predicted at a time (memory does not grow with the number of images).")
@tta_option
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write every prediction (all class probabilities) to this .csv or .jsonl file as it comes, "
                   "instead of printing; rerun the same command to finish an interrupted one.")
@quiet_option
def predict(paths: tuple[str, ...], run_dir: str | None, top_k: int, as_json: bool, batch_size: int, tta: int,
            out: str | None, quiet: bool) -> None:
    """Predict the class of each image in PATHS (files or folders), printing each as it comes."""
    _setup_logging(quiet)
    if out is not None:
        if as_json:
            raise click.UsageError("--json prints predictions, --out writes them to a file: give one of them")
        from tlkit.results import predict_to_file

        counts = predict_to_file(list(paths), out, run_dir, batch_size, tta, progress=not quiet)
        click.echo(f"{out}: {counts['predicted']} image(s) predicted, {counts['unreadable']} unreadable, "
                   f"{counts['already']} already there")
        return
    from tlkit.predict import iter_predictions

    # bad paths and runs fail here, before any output
    predictions = iter_predictions(list(paths), run_dir, top_k, batch_size, tta)
    first = True
    for prediction in predictions:  # printed as they come: an interrupted run keeps what it printed
        if as_json:
            click.echo(("[\n" if first else ",\n") + json.dumps(prediction.to_dict(), ensure_ascii=False), nl=False)
        else:
            ranked = ", ".join(f"{label} {p:.4f}" for label, p in prediction.top_k)
            click.echo(f"{prediction.path}: {ranked}")
        first = False
    if as_json:
        click.echo("\n]")


@main.command()
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
@quiet_option
def evaluate(data: str | None, run_dir: str | None, split: str | None, as_json: bool, mistakes: int,
             confusion_png: str | None, tta: int, quiet: bool) -> None:
    """Score a run on labelled images in DATA (default: the run's own data)."""
    _setup_logging(quiet)
    from tlkit.evaluate import evaluate as evaluate_run

    report = evaluate_run(data, run_dir, split, verbose=0 if quiet or as_json else 1, mistakes=mistakes, tta=tta)
    if confusion_png:
        from tlkit.plots import plot_confusion

        plot_confusion(report["confusion_matrix"], report["class_names"], confusion_png)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    views = f", {report['tta']} views each" if report["tta"] > 1 else ""
    click.echo(f"{report['data']} [{report['split']}]: {report['count']} images{views}")
    click.echo(f"loss: {report['loss']:.4f}  accuracy: {report['accuracy']:.4f}")
    width = max(len(name) for name in [*report["per_class"], "weighted avg"])
    click.echo(f"{'class':<{width}}  precision  recall     f1  support")
    rows = [*report["per_class"].items(), ("macro avg", {**report["macro_avg"], "support": report["count"]}),
            ("weighted avg", {**report["weighted_avg"], "support": report["count"]})]
    for name, row in rows:
        click.echo(f"{name:<{width}}  {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:6.4f} "
                   f"{row['support']:8d}")
    click.echo("confusion matrix (rows: true, columns: predicted):")
    for name, counts in zip(report["class_names"], report["confusion_matrix"]):
        click.echo(f"{name:<{width}}  " + " ".join(f"{n:6d}" for n in counts))
    if report["top_losses"]:
        click.echo("most confident mistakes:")
    for mistake in report["top_losses"]:
        click.echo(f"  {mistake['path']}: {mistake['true']} taken for {mistake['predicted']} "
                   f"({mistake['probability']:.4f}, loss {mistake['loss']:.4f})")


@main.command()
@click.argument("data", type=click.Path())
@click.option("--folds", type=click.IntRange(min=2), default=cfg.CV_FOLDS, show_default=True,
              help="K: the train and validation images, pooled, are dealt into K stratified folds, each held out once.")
@click.option("--repeats", type=click.IntRange(min=1), default=cfg.CV_REPEATS, show_default=True,
              help="Deal the K folds this many times, shuffled anew each time (iterated K-fold).")
@config_options(("image_size", "test_split", "seed", "workers", "cache_dir", "weights", "epochs", "batch_size",
                 "optimizer", "learning_rate", "pooling", "head_units", "dropout", "precision", "class_weight",
                 "distribute"))
@config_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, every fold's epoch logs included.")
@quiet_option
def cv(data: str, folds: int, repeats: int, config_file: str | None, as_json: bool, quiet: bool, **options) -> None:
    """Cross-validate the dense head on DATA's cached features: stratified K-fold, optionally repeated."""
    _setup_logging(quiet)
    from tlkit.cv import cross_validate

    result = cross_validate(data, one_machine(build_config(config_file, options)), folds, repeats,
                            verbose=0 if quiet or as_json else 1)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    click.echo(f"{data}: {result.images} train and validation images ({', '.join(result.class_names)}), "
               f"{folds} folds x {repeats} repeat(s)")
    for repeat, mean in enumerate(result.repeat_accuracy):
        scores = " ".join(f"{fold['val_accuracy']:.4f}" for fold in result.fold_results if fold["repeat"] == repeat)
        click.echo(f"repeat {repeat + 1}: {scores}  mean {mean:.4f}")
    click.echo(f"val_accuracy: {result.mean_accuracy:.4f} +/- {result.std_accuracy:.4f} (mean +/- std of "
               f"{folds * repeats} folds)  val_loss: {result.mean_loss:.4f}")
    best = result.best_epoch - 1
    click.echo(f"best_epoch: {best + 1} of {len(result.epoch_val_loss)} (lowest mean val_loss "
               f"{result.epoch_val_loss[best]:.4f}, mean val_accuracy {result.epoch_val_accuracy[best]:.4f})")
    if result.skipped:
        click.echo(f"skipped: {len(result.skipped)} file(s) (see the warnings)")


@main.command()
@click.argument("run_dir", required=False, type=click.Path())
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
@click.argument("image", type=click.Path())
@run_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The PNG to write: the heatmap over the image.")
@click.option("--class", "class_name", help="Class whose evidence is shown [default: the predicted one].")
@click.option("--opacity", type=click.FloatRange(0, 1), default=cfg.CAM_OPACITY, show_default=True,
              help="Opacity of the heatmap over the image.")
@quiet_option
def explain(image: str, run_dir: str | None, out: str, class_name: str | None, opacity: float, quiet: bool) -> None:
    """Grad-CAM: draw where in IMAGE the run's classifier sees the evidence for a class."""
    _setup_logging(quiet)
    from tlkit.explain import explain as explain_image, write_overlay
    from tlkit.files import require_parent

    require_parent(out)  # before the work
    explanation = explain_image(image, run_dir, class_name)
    write_overlay(explanation, out, opacity)
    click.echo(f"{out}: evidence for {explanation.class_name} (probability {explanation.probability:.4f}; "
               f"predicted: {explanation.predicted})")


@main.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@click.option("--data", type=click.Path(), help="Labelled images to evaluate on [default: the run's own data].")
@click.option("--split", type=click.Choice(("train", "val", "test", "all")),
              help="Which images [default: as tlkit evaluate].")
@click.option("--top-losses", "mistakes", type=click.IntRange(min=0), default=cfg.TOP_LOSSES, show_default=True,
              help="How many of the most confident mistakes the gallery shows.")
@tta_option
@quiet_option
def report(run_dir: str | None, out: str, data: str | None, split: str | None, mistakes: int, tta: int,
           quiet: bool) -> None:
    """Write one self-contained HTML page about a run (default: the latest under runs/): settings, curves,
    metrics, confusion matrix, its worst mistakes with Grad-CAM, skipped files."""
    _setup_logging(quiet)
    from tlkit.report import write_report

    evaluation = write_report(out, run_dir, data, split, mistakes, tta, verbose=0 if quiet else 1)
    click.echo(f"report: {out} (accuracy {evaluation['accuracy']:.4f} on {evaluation['count']} images, "
               f"{len(evaluation['top_losses'])} mistake(s) shown)")


@main.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--format", "fmt", required=True, type=click.Choice(("savedmodel", "tflite", "onnx")),
              help="savedmodel (a folder) and tflite need the TensorFlow backend; onnx TensorFlow or PyTorch.")
@click.option("--out", required=True, type=click.Path(),
              help="The SavedModel folder, or the .tflite or .onnx file (plus <out>.json) to write; never overwritten.")
@quiet_option
def export(run_dir: str | None, fmt: str, out: str, quiet: bool) -> None:
    """Export a run's classifier (default: the latest under runs/) for use without tlkit: raw RGB pixels in,
    class probabilities out, class names inside."""
    _setup_logging(quiet)
    from tlkit.export import export as export_run, read_contract

    path = export_run(run_dir, fmt, out)
    contract = read_contract(path)
    click.echo(f"{fmt}: {path} (input {contract['input']['name']} float32 (batch, {contract['image_size']}, "
               f"{contract['image_size']}, 3) RGB 0-255; output {contract['output']['name']}: "
               f"{', '.join(contract['class_names'])})")


if __name__ == "__main__":
    main()
