"""tlkit audit end to end, on real photos (a few natural_images_30px thumbnails copied into tmp_path) and real
VGG16 weights: a clean dataset gives no finding at all; each planted problem is found as its kind, with the
leak counted, the fixed split written, the JSON printed and the page rendered by headless Chromium."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

import tlkit
from tlkit.auditing.auditor import audit
from tlkit.auditing.findings import KINDS, AuditSettings
from tlkit.auditing.fix import write_fixed_split
from tlkit.auditing.looks import LOOK_MIN_CLASS, look_scores, look_statistics
from tlkit.auditing.page import render, write_page
from tlkit.cli import main

from conftest import NATURAL_IMAGES, REAL_WEIGHTS, require_shared
from test_report import _chromium

pytestmark = pytest.mark.backend_independent  # the audit's model work is cv's, tested on every backend

CLASSES = ("airplane", "car", "flower")
#: The defaults are calibrated on thousands of images; heads trained on 42 are less sure of themselves, and a
#: class of 18 images has a wider spread.
SETTINGS = AuditSettings(label_floor=0.2, outlier_score=3.5)
#: Images per class of the clean dataset: train, then val (the first of each class folder, by name).
TRAIN, VAL = 14, 4


def clean_copy(root: Path) -> Path:
    """A small, clean, split dataset of real photos: the first images of three natural_images_30px classes."""
    source = require_shared(NATURAL_IMAGES)
    for name in CLASSES:
        files = sorted((source / name).glob(f"{name}_*.jpg"))[:TRAIN + VAL]
        for i, path in enumerate(files):
            target = root / ("train" if i < TRAIN else "val") / name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return root


def small_config(cache: Path) -> tlkit.Config:
    return tlkit.Config().replace(data={"image_size": 64}, model={"weights": str(require_shared(REAL_WEIGHTS))},
                                  fit={"epochs": 20, "batch_size": 16}, runtime={"cache_dir": str(cache), "workers": 2})


@pytest.fixture
def audit_config(tmp_path) -> tlkit.Config:
    return small_config(tmp_path / "cache")


def test_a_clean_dataset_gives_no_finding(tmp_path, audit_config):
    data = clean_copy(tmp_path / "clean")
    result = audit(data, audit_config, SETTINGS)
    assert result.counts() == dict.fromkeys(KINDS, 0), [(f.kind, f.paths) for f in result.findings]
    assert result.images == {"train": 3 * TRAIN, "val": 3 * VAL} and result.leaked == {"val": 0}
    assert result.balance == {name: {"train": TRAIN, "val": VAL} for name in CLASSES}
    assert result.imbalance_ratio == 1.0 and not result.advise_class_weight
    features = tlkit.extract(data, audit_config, verbose=0)  # the audit's vectors: each map averaged, a chunk at a time
    maps, labels, files = features.split("val")
    vectors, same_labels, same_files = features.pooled("val", chunk=5)
    assert np.allclose(vectors, maps.mean(axis=(1, 2)), atol=1e-6) and same_files == files
    assert (same_labels == labels).all()


def plant(root: Path) -> dict[str, set]:
    """Plant one problem of each kind in the clean dataset at ``root``; the paths each kind should name."""
    train, val = root / "train", root / "val"
    car, flower, airplane = sorted((train / "car").iterdir()), sorted((train / "flower").iterdir()), \
        sorted((train / "airplane").iterdir())
    shutil.copyfile(car[0], val / "car" / "copy.jpg")  # the same bytes, across splits: a leak
    with Image.open(flower[0]) as img:
        img.save(train / "flower" / "resaved.png")  # the same pixels, another format
    shutil.copyfile(airplane[0], train / "car" / "conflict.jpg")  # the same image labelled airplane and car
    with Image.open(flower[1]) as img:  # re-exposed, across splits
        ImageEnhance.Brightness(img).enhance(1.12).save(val / "flower" / "brighter.jpg")
    flipped = train / "flower" / airplane[1].name
    airplane[1].rename(flipped)  # an airplane labelled flower
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(train / "car" / "noise.png")
    Image.new("RGB", (30, 30), (128, 128, 128)).save(train / "airplane" / "blank.png")
    unused = sorted((require_shared(NATURAL_IMAGES) / "car").glob("car_*.jpg"))[TRAIN + VAL:]  # not in the dataset
    with Image.open(unused[0]) as img:
        img.convert("L").save(train / "car" / "gray.jpg")
    with Image.open(unused[1]) as img:
        img.resize((6, 6)).save(train / "car" / "tiny.jpg")
    with Image.open(unused[2]) as img:
        img.resize((120, 30)).save(train / "car" / "wide.jpg")
    (train / "car" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return {"exact_duplicate": {frozenset({car[0], val / "car" / "copy.jpg"}),
                                frozenset({flower[0], train / "flower" / "resaved.png"}),
                                frozenset({airplane[0], train / "car" / "conflict.jpg"})},
            "near_duplicate": {frozenset({flower[1], val / "flower" / "brighter.jpg"})},
            "label": {flipped}, "outlier": {train / "airplane" / "blank.png"},
            "uniform": {train / "airplane" / "blank.png"}, "grayscale": {train / "car" / "gray.jpg"},
            "small": {train / "car" / "tiny.jpg"}, "aspect_ratio": {train / "car" / "wide.jpg"},
            "unreadable": {train / "car" / "broken.jpg"}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted dataset, the paths each kind should name, and its audit (features and heads cached in
    ``cache`` beside it: the CLI's audit of it reuses them)."""
    root = tmp_path_factory.mktemp("planted")
    data = clean_copy(root / "data")
    expected = plant(data)
    return data, expected, audit(data, small_config(root / "cache"), SETTINGS)


def test_each_planted_problem_is_found_as_its_kind(planted):
    _, expected, result = planted
    found = {kind: [f for f in result.findings if f.kind == kind] for kind in KINDS}
    groups = {frozenset(Path(p) for p in f.paths) for f in found["exact_duplicate"]}
    assert groups == expected["exact_duplicate"]  # exactly these, nothing else
    by_name = {min(Path(p).name for p in f.paths): f for f in found["exact_duplicate"]}
    leak, resaved, conflict = by_name["car_0000.jpg"], by_name["flower_0000.jpg"], by_name["airplane_0000.jpg"]
    assert leak.evidence["leak"] and not leak.evidence["conflict"] and leak.evidence["how"] == "the same bytes"
    assert resaved.evidence["how"] == "the same pixels" and not resaved.evidence["leak"]
    assert conflict.evidence["conflict"] and set(conflict.evidence["labels"]) == {"airplane", "car"}
    assert conflict is found["exact_duplicate"][0]  # a conflict is the worst duplicate
    near = {frozenset(Path(p) for p in f.paths) for f in found["near_duplicate"]}
    assert expected["near_duplicate"] <= near and all(f.evidence["leak"] for f in found["near_duplicate"])
    for kind in ("uniform", "grayscale", "small", "aspect_ratio", "unreadable"):
        assert {Path(f.paths[0]) for f in found[kind]} == expected[kind], kind
    labels = {Path(f.paths[0]): f for f in found["label"]}
    (flipped,) = expected["label"]
    assert flipped in labels and labels[flipped].suggestion_label == "airplane"
    assert labels[flipped].evidence["given"] == "flower"
    assert set(labels[flipped].evidence["neighbours"]) == set(CLASSES)
    assert expected["outlier"] <= {Path(f.paths[0]) for f in found["outlier"]}
    assert result.leaked == {"val": 2}  # the copied car and the brighter flower


def test_the_public_audit_is_the_function_whatever_was_imported_first():
    import tlkit.cli  # imports tlkit.cli.audit_command, and with it the package tlkit.auditing

    assert callable(tlkit.audit) and tlkit.audit.__module__ == "tlkit.auditing.auditor"


def test_fix_split_moves_each_leaked_group_to_one_side_and_reads_back(tmp_path, planted):
    data, _, result = planted
    out = tmp_path / "fixed.csv"
    moved = write_fixed_split(result, out)
    rows = list(csv.DictReader(out.open()))
    assert moved == 2 and len(rows) == sum(result.images.values()) + 1  # the unreadable file too
    split = {row["path"]: row["split"] for row in rows}
    assert split["val/car/copy.jpg"] == split["val/flower/brighter.jpg"] == "train"  # a tie goes to train
    assert all(row["label"] == Path(row["path"]).parent.name for row in rows)  # no label is changed
    config = small_config(data.parent / "cache").replace(data={"labels": str(out)})
    index = tlkit.scan(data, config.data)
    assert len(index.files["val"]) == result.images["val"] - 2 and index.presplit
    assert (data / "val" / "car" / "copy.jpg").exists()  # no image moved
    assert tlkit.extract(index, config, verbose=0).reused  # the same files: the audit's features serve


def test_cli_prints_the_summary_or_the_json_and_refuses_bad_paths(tmp_path, planted):
    data, _, result = planted
    args = ["audit", str(data), "--image-size", "64", "--weights", str(REAL_WEIGHTS), "--epochs", "20", "--batch-size",
            "16", "--cache-dir", str(data.parent / "cache"), "--label-floor", "0.2", "--outlier-score", "3.5", "-q"]
    printed = CliRunner().invoke(main, [*args, "--json"])
    assert printed.exit_code == 0, printed.output
    report = json.loads(printed.stdout)
    assert report["counts"] == result.counts() and len(report["findings"]) == len(result.findings)
    assert {"path", "kind", "score", "evidence", "suggestion"} <= set(report["findings"][0])
    summary = CliRunner().invoke(main, args)
    assert summary.exit_code == 0, summary.output
    lines = summary.stdout.splitlines()
    assert lines[0].startswith(f"{data}: {sum(result.images.values())} images") and len(lines) < 45  # one screen
    assert "exact duplicate: 3 (1 across splits, 1 with different labels)" in summary.stdout
    assert "leak: 2 of" in summary.stdout and "unreadable: 1" in summary.stdout
    for bad, message in ((["audit", str(tmp_path / "nowhere")], "dataset folder not found"),
                         ([*args, "--html", str(tmp_path / "no" / "a.html")], "folder not found for")):
        failed = CliRunner().invoke(main, bad)
        assert failed.exit_code == 1 and message in failed.output and len(failed.output.strip().splitlines()) == 1


def test_too_few_images_for_the_folds_leave_the_labels_unchecked_and_the_rest_audited(planted):
    data, _, result = planted
    args = ["audit", str(data), "--image-size", "64", "--weights", str(REAL_WEIGHTS), "--epochs", "20", "--batch-size",
            "16", "--cache-dir", str(data.parent / "cache"), "--folds", "50", "-q"]
    summary = CliRunner().invoke(main, args)
    assert summary.exit_code == 0, summary.output
    assert "label: not checked: fewer readable images than 50 folds in airplane (" in summary.stdout
    assert "exact duplicate: 3 (1 across splits, 1 with different labels)" in summary.stdout  # the rest still audited
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert report["unchecked"]["label"].startswith("not checked") and report["counts"]["label"] == 0
    assert report["counts"]["exact_duplicate"] == result.counts()["exact_duplicate"]
    assert result.unchecked == {}  # enough images for 5 folds: checked
    unchecked = dataclasses.replace(result, unchecked={"label": report["unchecked"]["label"]},
                                    findings=[f for f in result.findings if f.kind != "label"])
    page = render(unchecked)
    assert "Not checked: fewer readable images than 50 folds" in page
    assert '<div class="value">-</div><div class="label">label</div>' in page  # not a zero


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const shown = images.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 50);
  const group = document.querySelector("#exact_duplicate .finding .row");
  const tops = new Set([...group.querySelectorAll("figure")].map(f => Math.round(f.getBoundingClientRect().top)));
  document.title = ["images", images.length, "shown", shown.length, "group_rows", tops.size,
                    "labels", document.querySelectorAll("#label .finding").length].join(" ");
});
</script>"""


def test_the_page_is_self_contained_and_chromium_renders_it(tmp_path, planted):
    chromium = _chromium()
    _, _, result = planted
    out = write_page(result, tmp_path / "audit.html")
    html = out.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("<figure>") == html.count('src="data:image/jpeg;base64,') + 1  # the unreadable file alone
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0].split()
    values = dict(zip(title[::2], title[1::2]))
    assert values["images"] == values["shown"] and int(values["images"]) > 20, title  # every thumbnail drawn
    assert values["group_rows"] == "1", title  # a duplicate group side by side
    assert int(values["labels"]) == len(result.of_kind("label")), title


def drawing(size: int = 30) -> np.ndarray:
    """A flat-coloured drawing (a red disc on white), as a slide or a clip-art image would be."""
    y, x = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 255, np.uint8)
    image[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2] = (200, 30, 30)
    return image


def test_a_drawing_among_photos_looks_unlike_them_and_small_classes_are_not_judged():
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in
              sorted((require_shared(NATURAL_IMAGES) / "car").glob("car_*.jpg"))[:LOOK_MIN_CLASS + 12]]
    images = np.stack([*photos, drawing()])
    statistics = look_statistics([images[:25], images[25:]], str(REAL_WEIGHTS))  # chunks, as the cache gives them
    assert statistics.shape == (len(images), 2 * (64 + 128 + 256))
    scores = look_scores(statistics, np.zeros(len(images), np.int64), 1)
    assert scores[-1] > AuditSettings().look_score and scores[-1] == scores.max()  # the drawing, found
    assert (scores[:-1] < AuditSettings().look_score).all()  # no photo of the class flagged
    few = np.zeros(len(images), np.int64)
    few[:LOOK_MIN_CLASS - 1] = 1  # a class too small to know its look: not scored
    assert (look_scores(statistics, few, 2)[:LOOK_MIN_CLASS - 1] == 0).all()


def test_the_audit_names_a_drawing_among_photos_an_outlier_by_its_look_and_caches_the_looks(tmp_path, monkeypatch):
    source = require_shared(NATURAL_IMAGES)
    for name, count in (("car", LOOK_MIN_CLASS + 2), ("flower", 10)):  # flowers too few to be judged by look
        for path in sorted((source / name).glob(f"{name}_*.jpg"))[:count]:
            (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp_path / "data" / name / path.name)
    Image.fromarray(drawing()).save(tmp_path / "data" / "car" / "slide.png")
    config = small_config(tmp_path / "cache").replace(data={"image_size": 32}, fit={"epochs": 3})
    settings = AuditSettings(folds=2)
    found = audit(tmp_path / "data", config, settings).of_kind("outlier")
    assert [Path(f.paths[0]).name for f in found] == ["slide.png"]  # the drawing, and no photo
    assert found[0].evidence["look_score"] > settings.look_score and "looks unlike the other car" in found[0].suggestion
    monkeypatch.setattr("tlkit.auditing.auditor.look_statistics", None)  # computed again, it would fail
    assert audit(tmp_path / "data", config, settings).of_kind("outlier")[0].evidence == found[0].evidence
