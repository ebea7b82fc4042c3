"""``tlkit report``: one self-contained HTML page about a run.

The page holds the run's settings and record, its learning curves, an evaluation (per-class
metrics table and confusion matrix), a gallery of the most confident mistakes with their Grad-CAM
heatmaps, and every skipped file. Pictures are embedded as ``data:`` URIs and the style sheet is
inline, so the file can be mailed or archived and opens offline; it loads nothing and runs no script.
"""

from __future__ import annotations

import base64
import io
import shlex
from datetime import datetime
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from tlkit import __version__
from tlkit.config import PREDICT_BATCH, TOP_LOSSES
from tlkit.data.decode import decode_image, read_rgb
from tlkit.inference.evaluate import Evaluation, MultiLabelEvaluation, evaluate
from tlkit.inference.explain import Explanation, explain_images
from tlkit.io import atomic_write, read_json
from tlkit.outputs import check_output
from tlkit.plots import LABELLED_CLASSES, confusion_png, top_confusions
from tlkit.runs import CONFIG_FILE, CURVES_FILE, Run, best_epoch_of, resolve_run

#: Longest side of a picture in the mistakes gallery, in pixels.
GALLERY_SIDE = 240

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0;
       background: #f4f6f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #dde3ea;
     padding-bottom: 4px; }
.subtitle { color: #5b6675; margin: 0 0 18px; }
.trust { margin: 14px 0 0; color: #2c3440; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #dde3ea; border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card .value { font-size: 24px; font-weight: 600; } .card .label { color: #5b6675; font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e6eaef; padding: 4px 12px; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { background: #eef2f6; }
tr.average td { font-style: italic; }
img.plot { max-width: 100%; border: 1px solid #e6eaef; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 16px; }
figure.mistake { margin: 0; border: 1px solid #dde3ea; border-radius: 8px; padding: 8px; }
figure.mistake img { width: 100%; }
figcaption { font-size: 13px; } figcaption .path { color: #5b6675; word-break: break-all; }
.wrong { color: #b3261e; font-weight: 600; } .none { color: #5b6675; }
code { font-size: 13px; }
#config td, #config th, #skipped td, #skipped th { text-align: left; }
"""


def write_report(out: str | Path, run: Run | str | Path | None = None, data: str | Path | None = None,
                 split: str | None = None, *, mistakes: int = TOP_LOSSES, tta: int = 1,
                 batch_size: int = PREDICT_BATCH, verbose: int = 0, labels: str | Path | None = None
                 ) -> Evaluation | MultiLabelEvaluation:
    """Evaluate a run and write its HTML report (atomically).

    Args:
        out: The HTML file to write.
        run: A loaded run, a run folder, or ``None`` for the latest under ``runs/``.
        data, split, tta, batch_size, verbose, labels: What to evaluate on and how, as :func:`tlkit.evaluate`.
        mistakes: How many of the most confident mistakes the gallery shows.

    Returns:
        The evaluation shown (:func:`tlkit.evaluate`'s).

    Raises:
        TlkitError: As :func:`tlkit.evaluate`.
    """
    out = check_output(out)  # before the work
    run = resolve_run(run)
    evaluation = evaluate(data, run, split, batch_size=batch_size, verbose=verbose, mistakes=mistakes, tta=tta,
                          labels=labels)
    explanations = _explain_mistakes(run, evaluation.top_losses)
    page = render(run, evaluation, explanations)
    atomic_write(out, lambda temporary: Path(temporary).write_text(page, encoding="utf-8"))
    return evaluation


def _explain_mistakes(run: Run, mistakes: list[dict]) -> list[Explanation]:
    """Grad-CAM of each mistake for the class it was taken for, over a gallery-sized picture."""
    if not mistakes:
        return []
    paths = [Path(mistake["path"]) for mistake in mistakes]
    pixels = np.stack([decode_image(path, run.image_size) for path in paths])
    pictures = []
    for path in paths:
        picture = read_rgb(path, draft=GALLERY_SIDE)
        picture.thumbnail((GALLERY_SIDE, GALLERY_SIDE), Image.Resampling.LANCZOS)
        pictures.append(picture)
    return explain_images(run, paths, pixels, pictures, [mistake.get("label", mistake["predicted"])
                                                         for mistake in mistakes])


def render(run: Run, evaluation: Evaluation | MultiLabelEvaluation, explanations: list[Explanation]) -> str:
    """The report page as HTML text."""
    provenance = read_json(run.path / CONFIG_FILE)["provenance"]
    metrics = f"Metrics on {escape(evaluation.split)} ({evaluation.count} images)"
    if getattr(evaluation, "multi_label", False):
        scores = [_section(metrics, _label_table(evaluation)),
                  _section("Images decided worst", _gallery(evaluation.top_losses, explanations, evaluation.accuracy))]
    else:
        scores = [_section(metrics, _metrics_table(evaluation)),
                  _section("Confusion matrix", _confusion_table(evaluation) + _image(
                      confusion_png(evaluation.confusion_matrix, evaluation.class_names), "image/png",
                      "confusion matrix, counts and row-normalised", "plot")),
                  _section("Most confident mistakes", _gallery(evaluation.top_losses, explanations,
                                                               evaluation.accuracy))]
    sections = [
        _summary(run, evaluation, provenance),
        _section("Learning curves", _image((run.path / CURVES_FILE).read_bytes(), "image/png",
                                           "training and validation accuracy and loss per epoch", "plot")),
        *scores,
        _section("Skipped files", _skipped(run.metrics.get("skipped", {}), evaluation.skipped)),
        _section("Configuration", _config_table(run, provenance)),
    ]
    title = f"tlkit report: {run.path.name}"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{STYLE}</style>\n'
            f'</head>\n<body>\n<main>\n<h1>{escape(title)}</h1>\n' + "\n".join(sections) +
            f'\n<p class="subtitle">Written by tlkit {__version__} on '
            f'{datetime.now().astimezone().isoformat(timespec="seconds")}.</p>\n</main>\n</body>\n</html>\n')


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{title}</h2>\n{body}\n</section>"


def _image(data: bytes, kind: str, alt: str, css: str = "") -> str:
    source = f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img class="{css}" alt="{escape(alt)}" src="{source}">'


def _summary(run: Run, evaluation: Evaluation, provenance: dict) -> str:
    metrics = run.metrics
    epochs, best = metrics["epochs_run"], best_epoch_of(metrics)
    views = f" over {evaluation.tta} test-time views" if evaluation.tta > 1 else ""
    subtitle = (f"{escape(run.config.fit.mode)} run on <code>{escape(run.data_dir)}</code>, created "
                f"{escape(provenance['created'])} on the {escape(provenance['backend'])} backend; "
                f"evaluated on <code>{escape(evaluation.data)}</code> [{escape(evaluation.split)}]{views}.")
    if getattr(evaluation, "multi_label", False):
        figures = [(f"{evaluation.micro_f1:.4f}", "micro F1"), (f"{evaluation.macro_f1:.4f}", "macro F1"),
                   (f"{evaluation.mean_average_precision:.4f}", "mAP"),
                   (f"{evaluation.accuracy:.4f}", f"subset accuracy ({_interval(evaluation)})")]
    else:
        figures = [(f"{evaluation.accuracy:.4f}", f"accuracy ({_interval(evaluation)})"),
                   (f"{evaluation.macro_avg['f1']:.4f}", "macro F1")]
    cards = [*figures, (f"{evaluation.loss:.4f}", "loss"), (str(evaluation.count), "images evaluated"),
             (" + ".join(map(str, epochs)), "epochs run (per phase)"),
             (f"phase {best['best_phase_number']} epoch {best['best_phase_epoch']}",
              f"best epoch ({best['best_epoch']} overall, in {escape(best['best_phase'])})")]
    if getattr(evaluation, "top_5_accuracy", None) is not None:
        cards.insert(1, (f"{evaluation.top_5_accuracy:.4f}", "top-5 accuracy"))
    body = "".join(f'<div class="card"><div class="value">{value}</div><div class="label">{label}</div></div>'
                   for value, label in cards)
    return (f'<p class="subtitle">{subtitle}</p>\n<div class="cards">{body}</div>\n'
            f'<p class="trust">{escape(_trust(evaluation))}</p>')


def _interval(evaluation: Evaluation | MultiLabelEvaluation) -> str:
    low, high = evaluation.accuracy_ci95
    return f"95% CI {low:.3f}-{high:.3f}"


def _trust(evaluation: Evaluation | MultiLabelEvaluation) -> str:
    """How far to trust the figures above: the evaluation's caveat, or why they can be trusted."""
    interval = (f"The accuracy's 95% interval ({_interval(evaluation).removeprefix('95% CI ')}) is how far "
                f"{evaluation.count} images pin it down. ")
    if evaluation.caveat:
        return interval + evaluation.caveat[0].upper() + evaluation.caveat[1:] + "."
    return interval + "Nothing was trained or chosen on these images: these are the figures to trust."


def _metrics_table(evaluation: Evaluation) -> str:
    rows = [(name, row, "") for name, row in evaluation.per_class.items()]
    rows += [(label, {**getattr(evaluation, key), "support": evaluation.count}, "average")
             for key, label in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg"))]
    body = "".join(f'<tr class="{css}"><td>{escape(name)}</td><td>{row["precision"]:.4f}</td>'
                   f'<td>{row["recall"]:.4f}</td><td>{row["f1"]:.4f}</td><td>{row["support"]}</td></tr>'
                   for name, row, css in rows)
    return ('<table id="metrics"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
            f'<th>support</th></tr></thead><tbody>{body}</tbody></table>\n'
            f'<p>Accuracy {evaluation.accuracy:.4f}, cross-entropy loss {evaluation.loss:.4f}.</p>')


def _label_table(evaluation: MultiLabelEvaluation) -> str:
    body = "".join(f'<tr><td>{escape(name)}</td><td>{row["precision"]:.4f}</td><td>{row["recall"]:.4f}</td>'
                   f'<td>{row["f1"]:.4f}</td><td>{row["average_precision"]:.4f}</td><td>{row["threshold"]:.4f}</td>'
                   f'<td>{row["support"]}</td></tr>' for name, row in evaluation.per_label.items())
    return ('<table id="labels"><thead><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>'
            f'<th>average precision</th><th>threshold</th><th>support</th></tr></thead><tbody>{body}</tbody></table>\n'
            f'<p>Multi-label: each label decided at its threshold. Micro F1 {evaluation.micro_f1:.4f}, macro F1 '
            f'{evaluation.macro_f1:.4f}, mAP {evaluation.mean_average_precision:.4f}, subset accuracy (every label '
            f'right) {evaluation.accuracy:.4f}, binary cross-entropy {evaluation.loss:.4f}.</p>')


def _confusion_table(evaluation: Evaluation) -> str:
    names = evaluation.class_names
    if len(names) > LABELLED_CLASSES:  # a table of every cell would grow with the square of the classes
        return _top_confusions(evaluation)
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    body = ""
    for name, counts, shares in zip(names, evaluation.confusion_matrix, evaluation.confusion_matrix_normalized):
        cells = "".join(f"<td>{count} ({share:.2f})</td>" for count, share in zip(counts, shares))
        body += f"<tr><th>{escape(name)}</th>{cells}</tr>"
    return (f'<table id="confusion"><thead><tr><th>true \\ predicted</th>{head}</tr></thead><tbody>{body}</tbody>'
            "</table>\n<p>Counts, with the share of the true class's images in brackets.</p>")


def _top_confusions(evaluation: Evaluation) -> str:
    found = top_confusions(evaluation.confusion_matrix, evaluation.class_names)
    if not found:
        return '<p class="none">No confusions: every image was classified correctly.</p>'
    body = "".join(f"<tr><td>{escape(true)}</td><td>{escape(predicted)}</td><td>{images}</td><td>{share:.2f}</td></tr>"
                   for true, predicted, images, share in found)
    return ('<table id="top-confusions"><thead><tr><th>true</th><th>taken for</th><th>images</th>'
            f'<th>share of the true class</th></tr></thead><tbody>{body}</tbody></table>\n'
            f"<p>The {len(found)} most frequent confusions among {len(evaluation.class_names)} classes; the whole "
            "matrix: <code>tlkit evaluate --json</code>.</p>")


def _gallery(mistakes: list[dict], explanations: list[Explanation], accuracy: float) -> str:
    if not mistakes:
        return ('<p class="none">No mistakes: every image was classified correctly.</p>' if accuracy == 1.0 else
                '<p class="none">None shown (the number of mistakes to show was 0).</p>')
    figures = []
    multi = "label" in mistakes[0]
    for rank, (mistake, explanation) in enumerate(zip(mistakes, explanations), start=1):
        picture = _side_by_side(explanation.image, explanation.overlay())
        shown = mistake["label"] if multi else mistake["predicted"]
        alt = f"{mistake['path']}: the image, and where the model saw {shown}"
        what = (f'labelled {escape(";".join(mistake["true"]) or "(none)")}, predicted '
                f'{escape(";".join(mistake["predicted"]) or "(none)")}</span> ({escape(shown)} '
                if multi else f'{escape(mistake["true"])} taken for {escape(mistake["predicted"])}</span> (')
        figures.append(
            f'<figure class="mistake" data-path="{escape(mistake["path"])}">{_image(picture, "image/jpeg", alt)}'
            f'<figcaption>#{rank} <span class="wrong">{what}{mistake["probability"]:.4f}, loss '
            f'{mistake["loss"]:.3f})<br><span class="path">{escape(mistake["path"])}</span></figcaption></figure>')
    explained = ("the label decided most wrongly" if multi else "the class it was taken for")
    return (f'<p>{"Images with a wrong label decision" if multi else "Misclassified images"} by decreasing loss; '
            f'beside each, Grad-CAM of {explained} (red: the strongest evidence).</p>\n'
            '<div class="gallery" id="mistakes">' + "".join(figures) + "</div>")


def _side_by_side(left: Image.Image, right: Image.Image) -> bytes:
    """Two pictures of the same size next to each other, as JPEG bytes."""
    pair = Image.new("RGB", (left.width * 2 + 6, left.height), (255, 255, 255))
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width + 6, 0))
    buffer = io.BytesIO()
    pair.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _skipped(training: dict[str, str], evaluation: list[str]) -> str:
    rows = [(path, reason, "training") for path, reason in sorted(training.items())]
    rows += [(path, "not a readable image (see the evaluation's warnings)", "evaluation")
             for path in evaluation if path not in training]
    if not rows:
        return '<p class="none">None: every file was read.</p>'
    body = "".join(f"<tr><td><code>{escape(path)}</code></td><td>{escape(where)}</td><td>{escape(reason)}</td></tr>"
                   for path, reason, where in rows)
    return (f'<table id="skipped"><thead><tr><th>file</th><th>skipped in</th><th>reason</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _config_table(run: Run, provenance: dict) -> str:
    body = "".join(f"<tr><td>{escape(section)}</td><td>{escape(name)}</td><td><code>{escape(str(value))}</code></td></tr>"
                   for section, values in run.config.to_dict().items() for name, value in values.items())
    return (f'<table id="config"><thead><tr><th>section</th><th>option</th><th>value</th></tr></thead>'
            f"<tbody>{body}</tbody></table>\n<p>Rerun with <code>{escape(rerun_command(run, provenance))}</code>.</p>")


def rerun_command(run: Run, provenance: dict) -> str:
    """The ``tlkit train`` command that trains this run again: its config, and the run it started from."""
    start = provenance.get("from_run")
    command = f"tlkit train DATA --config {shlex.quote(str(run.path / CONFIG_FILE))}"
    return command + (f" --from {shlex.quote(start)}" if start else "")
