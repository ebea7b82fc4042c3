"""The audit's arithmetic on made-up vectors and probabilities: blocked similarity search, grouping, confident
learning and the file checks, against brute force and planted answers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tlkit.auditing import similarity
from tlkit.auditing.files import ZOOMS, FileFacts, image_problems, read_facts
from tlkit.auditing.findings import AuditSettings
from tlkit.auditing.labels import confident_joint, find_label_issues
from tlkit.auditing.similarity import centroid_similarity, groups, near_pairs, unit_rows

pytestmark = pytest.mark.backend_independent  # numpy only: the TensorFlow pass runs it


def planted_vectors(n=400, d=64, copies=((3, 17), (40, 41), (100, 399)), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    for source, copy in copies:
        x[copy] = x[source] + rng.normal(0, 0.05, d)  # a near copy: cosine ~0.999
    return unit_rows(x)


@pytest.mark.parametrize("block_bytes", [similarity.BLOCK_BYTES, 4 * 400 * 7])  # one block; blocks of 7 rows
def test_near_pairs_finds_exactly_the_pairs_above_the_threshold_whatever_the_blocks(monkeypatch, block_bytes):
    monkeypatch.setattr(similarity, "BLOCK_BYTES", block_bytes)
    x = planted_vectors()
    i, j, s = near_pairs(x, 0.95)
    assert sorted(zip(i.tolist(), j.tolist())) == [(3, 17), (40, 41), (100, 399)]
    assert np.allclose(s, [x[a] @ x[b] for a, b in zip(i, j)], atol=1e-5) and (s >= 0.95).all()
    brute = x @ x.T
    for threshold in (0.2, 0.3):  # many pairs: the same as brute force, each once
        i, j, _ = near_pairs(x, threshold)
        want = {(a, b) for a, b in zip(*np.nonzero(brute >= threshold)) if a < b}
        assert set(zip(i.tolist(), j.tolist())) == want and len(i) == len(want)


def test_groups_are_cliques_built_from_the_most_similar_pair_down():
    i, j = np.array([0, 5, 2, 9, 3]), np.array([5, 7, 3, 2, 9])
    # 2, 3, 9: each a pair with the others; 0-5-7 is a chain, 5-7 the closer pair: 0 is left alone
    assert groups(i, j, np.array([0.95, 0.97, 0.99, 0.96, 0.96])) == [[2, 3, 9], [5, 7]]
    assert groups(i, j, np.array([0.99, 0.97, 0.99, 0.96, 0.96])) == [[0, 5], [2, 3, 9]]
    assert groups(np.array([], np.int64), np.array([], np.int64), np.array([])) == []


def test_centroid_similarity_is_the_cosine_to_each_class_mean_direction():
    rng = np.random.default_rng(1)
    x = unit_rows(rng.normal(size=(60, 8)).astype(np.float32))
    labels = np.repeat([0, 1, 2], [30, 28, 2])
    got = centroid_similarity(x, labels, 4)  # class 3 has no image
    for c in range(3):
        mean = x[labels == c].mean(axis=0)
        assert np.allclose(got[:, c], x @ (mean / np.linalg.norm(mean)), atol=1e-5)
    assert np.allclose(got[:, 3], 0)


def sure_probabilities(truth, classes, rng, confused=()):
    """Probabilities of a good classifier: its true class far ahead (a softmax of logits ~10 against ~0); the
    images in ``confused`` share their mass between their class and the next."""
    logits = rng.normal(0, 1, (len(truth), classes))
    logits[np.arange(len(truth)), truth] += rng.normal(10, 1.5, len(truth))
    confused = np.asarray(confused, dtype=np.int64)
    logits[confused, (truth[confused] + 1) % classes] = logits[confused, truth[confused]] + rng.normal(0, 1, len(confused))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_label_issues_are_the_flipped_labels_with_their_true_ones_suggested_not_the_honest_confusions():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        truth = rng.integers(0, 4, 800)
        order = rng.permutation(800)
        flipped, confused = order[:24], order[24:104]  # 3% flipped; 10% honestly between two classes
        probabilities = sure_probabilities(truth, 4, rng, confused)
        given = truth.copy()
        given[flipped] = (truth[flipped] + rng.integers(1, 4, 24)) % 4
        issues = find_label_issues(probabilities, given, floor=0.01)
        found = issues.rows.tolist()
        assert set(found) <= set(flipped.tolist()) and len(found) >= 0.9 * len(flipped)  # no honest confusion
        assert issues.suggested.tolist() == truth[issues.rows].tolist()  # the true label, each time
        assert (np.diff(issues.score) <= 0).all()  # worst first
        assert issues.joint.sum(axis=1).round(6).tolist() == np.bincount(given, minlength=4).tolist()  # calibrated
        assert find_label_issues(probabilities, truth, floor=0.01).rows.size == 0  # clean labels: nothing flagged


def test_confident_joint_counts_each_confident_image_under_its_likeliest_confident_class():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 0, 0, 1, 1])
    joint, thresholds = confident_joint(probabilities, labels)
    assert np.allclose(thresholds, [(0.9 + 0.8 + 0.3) / 3, (0.4 + 0.8) / 2])
    # t0 = 0.667, t1 = 0.6: rows 0, 1 -> 0; row 2 -> 1 (0.7 >= 0.6); row 3 -> none; row 4 -> 1
    assert joint.tolist() == [[2, 1], [0, 1]]
    assert find_label_issues(probabilities, labels, floor=0.3).rows.tolist() == [2]
    assert find_label_issues(probabilities, labels, floor=0.29).rows.tolist() == []


def test_image_problems_name_small_wide_uniform_and_grayscale_images():
    n = 10
    width, height = np.full(n, 300), np.full(n, 240)
    width[1], height[1] = 40, 30  # small
    width[2], height[2] = 1000, 200  # 5:1
    spread, colour = np.full(n, 50.0), np.full(n, 30.0)
    spread[3] = 1.0  # uniform
    colour[4] = 0.2  # grayscale
    thumbs = np.zeros((n, 256), np.float32)
    facts = FileFacts(width, height, [str(i) for i in range(n)], [""] * n, spread, colour, thumbs, thumbs, (thumbs,))
    paths = [f"img{i}.jpg" for i in range(n)]
    found = {(f.kind, f.paths[0]) for f in image_problems(facts, paths, AuditSettings())}
    assert found == {("small", "img1.jpg"), ("aspect_ratio", "img2.jpg"), ("uniform", "img3.jpg"),
                     ("grayscale", "img4.jpg")}
    colour[:] = 0.2  # a grayscale dataset: no image is odd for it
    assert not [f for f in image_problems(facts, paths, AuditSettings()) if f.kind == "grayscale"]


def test_near_pairs_against_a_transformed_copy_match_brute_force(monkeypatch):
    monkeypatch.setattr(similarity, "BLOCK_BYTES", 4 * 120 * 9)  # blocks of 9 rows
    rng = np.random.default_rng(3)
    x = unit_rows(rng.normal(size=(120, 16)).astype(np.float32))
    mirror = np.eye(16, dtype=np.float32)[::-1]  # a symmetric permutation, as mirroring a thumbnail is
    other = x @ mirror
    x[7] = other[50]  # 7 is 50 mirrored
    i, j, s = near_pairs(x, 0.3, x @ mirror)
    brute = x @ (x @ mirror).T
    want = {(a, b) for a, b in zip(*np.nonzero(brute >= 0.3)) if a < b}
    assert set(zip(i.tolist(), j.tolist())) == want and (7, 50) in want
    assert np.allclose(s, brute[i, j], atol=1e-5)


def test_near_pairs_against_a_cropped_copy_take_either_direction(monkeypatch):
    monkeypatch.setattr(similarity, "BLOCK_BYTES", 4 * 90 * 8)  # blocks of 8 rows
    rng = np.random.default_rng(4)
    x = unit_rows(rng.normal(size=(90, 12)).astype(np.float32))
    crop = unit_rows(x @ rng.normal(size=(12, 12)).astype(np.float32))  # not symmetric: x[i] @ crop[j] != x[j] @ crop[i]
    x[60], x[5] = crop[20], crop[70]  # 60 looks like 20 cropped, 5 like 70 cropped: pairs (20, 60) and (5, 70)
    i, j, s = near_pairs(x, 0.4, crop)
    brute = np.maximum(x @ crop.T, (x @ crop.T).T)
    want = {(a, b) for a, b in zip(*np.nonzero(brute >= 0.4)) if a < b}
    assert list(zip(i.tolist(), j.tolist())) == sorted(want) and {(20, 60), (5, 70)} <= want
    assert np.allclose(s, brute[i, j], atol=1e-5)


def test_a_centred_crop_scaled_back_correlates_with_the_zoomed_thumbnail_of_its_source(tmp_path):
    rng = np.random.default_rng(5)
    scene = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((120, 120), Image.Resampling.BICUBIC)
    other = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((120, 120), Image.Resampling.BICUBIC)
    cropped = scene.crop((8, 8, 112, 112)).resize((120, 120), Image.Resampling.BICUBIC)  # an 87% crop, scaled back
    paths = []
    for name, image in (("scene", scene), ("cropped", cropped), ("other", other)):
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1])
    decoded = np.stack([np.asarray(Image.open(path).convert("RGB").resize((224, 224))) for path in paths])
    facts = read_facts(paths, [decoded])
    assert len(facts.zoomed) == len(ZOOMS)
    whole = facts.thumbnail[0] @ facts.thumbnail[1]
    zoomed = max(crop[0] @ facts.thumbnail[1] for crop in facts.zoomed)
    assert zoomed >= 0.95 > whole  # only the crop's thumbnail finds it
    assert max(crop[0] @ facts.thumbnail[2] for crop in facts.zoomed) < 0.5  # another picture does not match
    assert facts.mirrored[0] @ facts.thumbnail[0] < 0.95


def test_a_chain_of_near_pairs_leaks_and_is_kept_on_one_side_whole():
    from tlkit.auditing.auditor import components
    from tlkit.auditing.findings import AuditResult, AuditSettings
    from tlkit.auditing.fix import fixed_split

    # 0 (val) ~ 1 (train) ~ 2 (train), 0 and 2 not a pair: a group {1, 2} alone would leave 0's leak
    assert components(np.array([0, 1, 5]), np.array([1, 2, 6]), 8) == [[0, 1, 2], [5, 6]]
    members = [(f"/d/{name}.jpg", "a", split) for name, split in
               (("p", "val"), ("q", "train"), ("r", "train"), ("s", "val"), ("t", "test"), ("u", "val"))]
    result = AuditResult(data="/d", class_names=("a",), images={}, findings=[], balance={}, imbalance_ratio=1.0,
                         leaked={}, settings=AuditSettings(), features="",
                         twins=[["/d/p.jpg", "/d/q.jpg", "/d/r.jpg"], ["/d/s.jpg", "/d/t.jpg"]], members=members)
    rows, moved = fixed_split(result)
    split = {path: side for path, _, side in rows}
    assert split == {"p.jpg": "train", "q.jpg": "train", "r.jpg": "train", "s.jpg": "val", "t.jpg": "val",
                     "u.jpg": "val"} and moved == 2  # the majority's side; a val/test tie goes to val
