"""The prepared GPU check, dry-run on this CPU with tiny sizes so that it cannot rot: scripts/bench.py's stages
(the host stages included), the report of each precision, and its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.backend_independent  # the check itself runs on JAX, whatever the suite's backend

STAGES = ["extract_cold", "extract_warm", "extract_cached", "frozen_epoch", "finetune_epoch"]
HOST = ["memory_copy", "feed", "feed_4_threads", "decode_pillow", "decode_tlkit", "transfer_uint8", "transfer_float32"]


def test_the_gpu_check_dry_run_writes_every_stage_of_both_precisions(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["backend"] == "jax" and report["image_size"] == 32
    assert [row["stage"] for row in report["stages"]] == STAGES
    for row in report["stages"]:
        assert row["classic_images_per_s"] > 0 and row["float32"]["images_per_s"] > 0
        assert row["mixed_bfloat16"]["images_per_s"] > 0
        assert row["float32"]["gpu_utilisation"] is None  # no nvidia-smi here: no sample, not a made-up figure
    floats = json.loads((out / "bench-float32.json").read_text())
    halves = json.loads((out / "bench-mixed_bfloat16.json").read_text())
    assert halves["tlkit_precision"] == "mixed_bfloat16" and halves["classic_from"]
    classic = {row["stage"]: row["classic_images_per_s"] for row in floats["results"]}
    assert {row["stage"]: row["classic_images_per_s"] for row in halves["results"]} == {
        stage: classic[stage] for stage in STAGES}  # the classic side ran once, in float32
    assert {span["side"] for span in halves["spans"]} == {"tlkit"}
    assert {(span["stage"], span["side"]) for span in floats["spans"]} >= {(s, "tlkit") for s in STAGES}
    host = {row["stage"]: row for row in report["host"]}
    assert list(host) == HOST and host["memory_copy"]["mb_per_s"] > 0
    for name in HOST[1:]:
        row = host[name]
        image_bytes = 32 * 32 * 3 * (4 if name == "transfer_float32" else 1)
        assert row["images_per_s"] > 0 and row["mb_per_s"] == pytest.approx(row["images_per_s"] * image_bytes / 1e6,
                                                                            abs=0.1)
        assert row["bandwidth_fraction"] == pytest.approx(row["mb_per_s"] / host["memory_copy"]["mb_per_s"], abs=1e-3)
    assert floats["predict"][0]["images"] == 8
    assert "tests collected" in report["tests"]["summary"] and report["tests"]["failed"] == 0
    table = (out / "gpu_check.md").read_text()
    for stage in STAGES + HOST:
        assert f"| {stage} |" in table
    assert "| extract_warm |" in table and "images_per_s >= 20,000" in table and "ratio >= 20" in table
