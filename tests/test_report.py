"""tlkit report: the page's content matches the evaluation, it is self-contained, and Chromium renders it."""

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.report import write_report

from conftest import make_dataset

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


class Page(HTMLParser):
    """The parts of a report a reader relies on: tables by id (rows of cell texts), images, mistake figures."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict] = []
        self.mistakes: list[str] = []
        self.tags: set[str] = set()
        self._table = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "figure" and attrs.get("class") == "mistake":
            self.mistakes.append(attrs["data-path"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture
def reported(tmp_path, config):
    """A run on three colours, and its report on the same pictures labelled wrongly (plenty of mistakes)
    with one unreadable file among them."""
    data = make_dataset(tmp_path / "d", ("blue", "green", "red"), per_class=6)
    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    swapped = tmp_path / "swapped"
    for name, other in (("blue", "green"), ("green", "red"), ("red", "blue")):
        shutil.copytree(data / other, swapped / name)
    (swapped / "red" / "broken.jpg").write_bytes(b"not a picture")
    out = tmp_path / "report.html"
    evaluation = write_report(out, tmp_path / "run", swapped, mistakes=4)
    return out, evaluation


def test_report_shows_the_evaluation(tmp_path, reported):
    out, evaluation = reported
    html = out.read_text(encoding="utf-8")
    page = Page(html)
    assert evaluation == tlkit.evaluate(tmp_path / "swapped", run=tmp_path / "run", mistakes=4)  # the same numbers
    rows = {row[0]: row[1:] for row in page.tables["metrics"][1:]}
    for name, row in evaluation.per_class.items():
        assert rows[name] == [f"{row[m]:.4f}" for m in ("precision", "recall", "f1")] + [str(row["support"])]
    assert rows["macro avg"][:3] == [f"{evaluation.macro_avg[m]:.4f}" for m in ("precision", "recall", "f1")]
    assert rows["weighted avg"][2] == f"{evaluation.weighted_avg['f1']:.4f}"
    counts = [[int(cell.split()[0]) for cell in row[1:]] for row in page.tables["confusion"][1:]]
    assert counts == evaluation.confusion_matrix
    # the gallery: one picture per listed mistake, in order, each the image beside its Grad-CAM overlay
    assert len(evaluation.top_losses) == 4
    assert page.mistakes == [mistake["path"] for mistake in evaluation.top_losses]
    gallery = [image for image in page.images if "where the model saw" in image["alt"]]
    assert len(gallery) == 4
    for image in gallery:
        picture = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert picture.format == "JPEG" and picture.size == (2 * 40 + 6, 40)  # 40-pixel pictures, side by side
        left, right = np.split(np.asarray(picture, dtype=float)[:, :80], 2, axis=1)
        assert np.abs(left - right).mean() > 10  # the overlay is not the picture again
    # curves and confusion matrix too; nothing fetched from anywhere, no script
    assert len(page.images) == 6 and all(image["src"].startswith("data:image/") for image in page.images)
    assert "http://" not in html and "https://" not in html and not page.tags & {"script", "link", "iframe"}
    assert [row[0] for row in page.tables["skipped"][1:]] == [str(tmp_path / "swapped" / "red" / "broken.jpg")]
    assert ["data", "image_size", "32"] in page.tables["config"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("TLKIT_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium is required here (TLKIT_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("Chromium is not installed (Debian: apt install chromium)")
    return found


#: Run after the page has loaded: what a reader would see, written into the title for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const shown = images.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 50);
  const gallery = document.getElementById("mistakes");
  const figures = [...gallery.querySelectorAll("figure")].map(f => f.getBoundingClientRect());
  const metrics = document.getElementById("metrics").getBoundingClientRect();
  document.title = ["images", images.length, "shown", shown.length, "gallery", getComputedStyle(gallery).display,
                    "rows", new Set(figures.map(r => Math.round(r.top))).size,
                    "metrics", Math.round(metrics.width), Math.round(metrics.height)].join(" ");
});
</script>"""


def test_chromium_renders_the_report(tmp_path, reported):
    """Headless Chromium, cut off from any network, loads every embedded picture and lays the page out."""
    chromium = _chromium()
    out, evaluation = reported
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0].split()
    values = dict(zip(title[::2], title[1::2]))
    assert values["images"] == values["shown"] == "6", title  # curves, confusion matrix, 4 mistakes
    assert values["gallery"] == "grid" and int(values["rows"]) == 1, title  # four figures side by side at 1280 px
    assert int(title[-2]) > 200 and int(title[-1]) > 100, title  # the metrics table has its size
    for name, row in evaluation.per_class.items():
        assert f"{row['recall']:.4f}" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert pixels.shape[:2] == (2000, 1280)
    assert (pixels.sum(axis=2) < 600).mean() > 0.02  # text and pictures, not a blank page


def test_cli_report_and_its_errors(tmp_path, config):
    data = make_dataset(tmp_path / "d", per_class=6)
    tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", "--run", str(tmp_path / "run"), "--out", str(out), "--top-losses", "0",
                                       "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"report: {out} (accuracy ") and "0 mistake(s) shown" in result.output
    html = out.read_text()
    accuracy = tlkit.evaluate(run=tmp_path / "run").accuracy
    assert ("No mistakes" in html) == (accuracy == 1.0) and ("None shown" in html) == (accuracy < 1.0)
    for args, message in ((["--run", "nowhere"], "run folder not found: nowhere"),
                          (["--run", str(tmp_path / "run"), "--data", "missing"], "dataset folder not found: missing")):
        bad = CliRunner().invoke(main, ["report", *args, "--out", str(tmp_path / "bad.html")])
        assert bad.exit_code == 1 and message in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.html").exists()
    missing = CliRunner().invoke(main, ["report", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "no" / "r.html")])
    assert missing.exit_code == 1 and missing.output.strip() == f"Error: folder not found for {tmp_path}/no/r.html: " \
                                                               f"create {tmp_path}/no first"  # before evaluating
