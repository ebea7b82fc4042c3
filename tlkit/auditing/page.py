"""``tlkit audit --html``: the audit as one self-contained page.

Duplicate groups side by side, each suspected label error with its given and suggested label and its nearest
images of each class, the outliers, the odd files and the balance table. Thumbnails are embedded as ``data:``
URIs and the style sheet is inline: the page loads nothing and runs no script, so it opens offline.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from html import escape
from pathlib import Path

from PIL import Image

from tlkit import __version__
from tlkit.auditing.findings import KINDS, AuditResult, Finding
from tlkit.data.decode import read_rgb
from tlkit.io import atomic_write
from tlkit.outputs import check_output

#: Longest side of a thumbnail, in pixels.
THUMB = 128
#: Findings of each kind shown on the page (the JSON holds them all).
SHOWN = 60
#: Neighbours shown per class for a label finding: of its given and suggested class; one of each other class.
MAIN_NEIGHBOURS, OTHER_NEIGHBOURS = 3, 1

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0;
       background: #f4f6f9; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #dde3ea;
     padding-bottom: 4px; }
.subtitle, .note { color: #5b6675; margin: 0 0 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #dde3ea; border-radius: 8px; padding: 8px 14px; min-width: 110px; }
.card .value { font-size: 22px; font-weight: 600; } .card .label { color: #5b6675; font-size: 13px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border-bottom: 1px solid #e6eaef; padding: 4px 12px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; } thead th { background: #eef2f6; }
.finding { border: 1px solid #dde3ea; border-radius: 8px; padding: 10px; margin: 0 0 12px; }
.finding p { margin: 0 0 8px; font-size: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: 132px; } figure img { width: 128px; height: auto; border: 1px solid #e6eaef; }
figcaption { font-size: 12px; color: #5b6675; word-break: break-all; }
.neighbours { margin-left: 16px; padding-left: 16px; border-left: 3px solid #eef2f6; }
.neighbours h4 { margin: 0 0 4px; font-size: 13px; }
.flag { color: #b3261e; font-weight: 600; } code { font-size: 13px; }
"""


def write_page(result: AuditResult, out: str | Path) -> Path:
    """Write the audit's page to ``out`` (whole, or not at all)."""
    out = check_output(out)
    html = render(result)
    atomic_write(out, lambda temporary: Path(temporary).write_text(html, encoding="utf-8"))
    return out


def render(result: AuditResult) -> str:
    """The page's HTML."""
    thumbs = _Thumbnails(result, {f.paths[0] for f in result.of_kind("unreadable")})
    counts = result.counts()
    cards = "".join(f'<div class="card"><div class="value">{"-" if kind in result.unchecked else counts[kind]}</div>'
                    f'<div class="label">{escape(kind.replace("_", " "))}</div></div>' for kind in KINDS)
    images = ", ".join(f"{count} {split}" for split, count in result.images.items())
    title = (f"<h1>Dataset audit</h1><p class=\"subtitle\"><code>{escape(result.data)}</code>: {images} images, "
             f"{len(result.class_names)} classes; tlkit {__version__}, {datetime.now():%Y-%m-%d %H:%M}</p>")
    body = [title,
            f'<div class="cards" id="counts">{cards}</div>', _leaks(result), _balance(result)]
    sections = (("Exact duplicates", "exact_duplicate", thumbs.group), ("Near duplicates", "near_duplicate",
                thumbs.group), ("Likely label errors", "label", thumbs.label), ("Outliers", "outlier", thumbs.single),
                ("Odd files", ("unreadable", "small", "aspect_ratio", "uniform", "grayscale"), thumbs.single))
    for title, kinds, draw in sections:
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        found = [f for f in result.findings if f.kind in kinds]
        more = f'<p class="note">{len(found) - SHOWN} more in <code>--json</code>.</p>' if len(found) > SHOWN else ""
        unchecked = [result.unchecked[kind] for kind in kinds if kind in result.unchecked]
        items = "".join(draw(finding) for finding in found[:SHOWN]) or (
            f'<p class="flag">{escape(unchecked[0][0].upper() + unchecked[0][1:])}.</p>' if unchecked
            else '<p class="note">None found.</p>')
        ident = kinds[0] if len(kinds) == 1 else "files"
        body.append(f'<h2>{title} ({len(found)})</h2><p class="note">{escape(KINDS[kinds[0]]) if len(kinds) == 1 else ""}'
                    f'</p><section id="{ident}">{items}{more}</section>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tlkit audit</title>'
            f"<style>{STYLE}</style></head><body><main>{''.join(body)}</main></body></html>")


def _leaks(result: AuditResult) -> str:
    return "".join(f'<p class="{"flag" if result.leaked[split] else "note"}">{escape(note[0].upper() + note[1:])}.</p>'
                   for split, note in result.leak_notes().items())


def _balance(result: AuditResult) -> str:
    splits = list(result.images)
    head = "".join(f"<th>{escape(split)}</th>" for split in splits)
    rows = "".join(f"<tr><td>{escape(name)}</td>" + "".join(f"<td>{counts.get(split, 0)}</td>" for split in splits)
                   + f"<td>{sum(counts.values())}</td></tr>" for name, counts in result.balance.items())
    advice = ("<code>--class-weight auto</code> is advised." if result.advise_class_weight
              else "balanced enough to train without class weights.")
    return (f'<h2>Balance</h2><table id="balance"><thead><tr><th>class</th>{head}<th>all</th></tr></thead>'
            f'<tbody>{rows}</tbody></table><p class="note">Largest class / smallest: {result.imbalance_ratio:.2f}: '
            f"{advice}</p>")


class _Thumbnails:
    """Draws findings, each image's thumbnail encoded once."""

    def __init__(self, result: AuditResult, unreadable: set[str]) -> None:
        self.result, self.cache, self.unreadable = result, {}, unreadable

    def figure(self, path: str, caption: str) -> str:
        if path not in self.cache:
            self.cache[path] = "" if path in self.unreadable else _thumbnail(path)
        name = self.result.relative(path)
        picture = (f'<img src="{self.cache[path]}" alt="{escape(name)}">' if self.cache[path]
                   else '<div class="note">(unreadable)</div>')
        return f"<figure>{picture}<figcaption>{escape(caption)}<br>{escape(name)}</figcaption></figure>"

    def group(self, finding: Finding) -> str:
        evidence = finding.evidence
        flags = [word for word, on in (("conflict", evidence["conflict"]), ("leak", evidence["leak"])) if on]
        figures = "".join(self.figure(path, f"{split} / {label}")
                          for path, split, label in zip(finding.paths, evidence["splits"], evidence["labels"]))
        return (f'<div class="finding"><p><span class="flag">{" ".join(flags)}</span> {escape(evidence["how"])}: '
                f'{escape(finding.suggestion)}</p><div class="row">{figures}</div></div>')

    def single(self, finding: Finding) -> str:
        details = ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in finding.evidence.items())
        return (f'<div class="finding"><p><b>{escape(finding.kind.replace("_", " "))}</b>: {escape(details)}. '
                f'{escape(finding.suggestion)}</p><div class="row">{self.figure(finding.paths[0], finding.kind)}'
                "</div></div>")

    def label(self, finding: Finding) -> str:
        evidence = finding.evidence
        given, suggested = evidence["given"], evidence["suggested"]
        shown = [given, suggested, *(name for name in evidence["neighbours"] if name not in (given, suggested))]
        columns = "".join(
            f'<div><h4>nearest {escape(name)}</h4><div class="row">'
            + "".join(self.figure(path, f"{similarity:.3f}") for path, similarity in
                      evidence["neighbours"][name][:MAIN_NEIGHBOURS if name in (given, suggested) else OTHER_NEIGHBOURS])
            + "</div></div>" for name in shown)
        return (f'<div class="finding"><p>labelled <b>{escape(given)}</b> (p {evidence["p_given"]:.3f}), looks like '
                f'<b class="flag">{escape(suggested)}</b> (p {evidence["p_suggested"]:.3f}); {escape(evidence["split"])}'
                f'</p><div class="row">{self.figure(finding.paths[0], f"given {given}")}'
                f'<div class="row neighbours">{columns}</div></div></div>')


def _thumbnail(path: str) -> str:
    """A JPEG thumbnail of the image as a ``data:`` URI; ``""`` when it cannot be read."""
    try:
        image = read_rgb(path, draft=THUMB)
    except Exception:  # noqa: BLE001 (whatever kept it from being decoded for training keeps it off the page)
        return ""
    image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    if min(image.size) < THUMB // 2:  # tiny images shown larger, pixels kept sharp
        factor = THUMB // max(image.size)
        if factor > 1:
            image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
