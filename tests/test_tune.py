"""tlkit tune: the search finds a better head than a bad default, resumes after a SIGKILL, keeps to its time
budget, and refuses bad ranges and other searches in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import tlkit
import tlkit.training.tune
from tlkit.cli import main
from tlkit.config import load_config
from tlkit.intervals import wilson
from tlkit.training.tune import tune
from tlkit.training.tune_space import trial_config

from conftest import make_dataset

#: Fixed settings under which only the learning rate matters; its default, 1e-7, learns nothing in 20 epochs.
BAD_DEFAULT = """
[data]
image_size = 32
seed = 1337
[model]
weights = "none"
head_units = 64
dropout = 0.0
[fit]
epochs = 20
batch_size = 8
optimizer = "adam"
learning_rate = 1e-7
"""

#: Runs ``tlkit tune`` (argv from the command line) and SIGKILLs its own process as fold head number N starts.
KILLER = """
import os, signal, sys
import tlkit.training.cv as cv
from tlkit.cli import main

kill_at, args = int(sys.argv[1]), sys.argv[2:]
fit_fold, fits = cv._fit_fold, []
def dying_fit_fold(*a):
    fits.append(1)
    if len(fits) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return fit_fold(*a)
cv._fit_fold = dying_fit_fold
main(args)
"""


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "d", ("blue", "red"), per_class=12)


def config_file(tmp_path, tune_table: str, name: str = "c.toml"):
    path = tmp_path / name
    path.write_text(tune_table + BAD_DEFAULT)
    return path


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def test_it_finds_a_learning_rate_that_beats_a_bad_default(tmp_path, data):
    settings = config_file(tmp_path, "[tune]\nlearning_rate = [1e-3, 1e-1]\n")
    done = invoke(["tune", data, "--config", settings, "--trials", 3, "--folds", 2, "--out", tmp_path / "t", "-q"])
    assert done.exit_code == 0, done.output
    default = tlkit.cross_validate(data, load_config(settings), folds=2)  # on the same folds and seeds
    record = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert [trial["number"] for trial in record["trials"]] == [1, 2, 3]
    best = next(trial for trial in record["trials"] if trial["number"] == record["ranking"][0])
    assert best["val_loss"] == min(trial["val_loss"] for trial in record["trials"])
    assert best["val_loss"] < default.mean_loss - 0.1 and best["val_accuracy"] > default.mean_accuracy
    assert 1e-3 <= best["hyperparameters"]["learning_rate"] <= 1e-1
    assert f"best settings: {tmp_path / 't' / 'best.toml'}" in done.output
    assert ["1", str(best["number"])] in [line.split()[:2] for line in done.output.splitlines()]  # ranked first
    low, high = best["val_accuracy_ci95"]
    assert low <= best["val_accuracy"] <= high and f"(95% CI {low:.3f}-{high:.3f})" in done.output
    tuned = load_config(tmp_path / "t" / "best.toml")
    assert tuned.fit.learning_rate == best["hyperparameters"]["learning_rate"]
    assert tuned.run_settings() == trial_config(load_config(settings), best["hyperparameters"]).run_settings()
    trained = invoke(["train", data, "--config", tmp_path / "t" / "best.toml", "--mode", "features", "--epochs", 2,
                      "--run-dir", tmp_path / "run", "-q"])
    assert trained.exit_code == 0, trained.output
    assert load_config(tmp_path / "run" / "config.json").fit.learning_rate == best["hyperparameters"]["learning_rate"]


@pytest.mark.backend_independent  # search logic; each backend fits heads in test_cv and the test above
def test_a_killed_search_resumes_without_running_finished_trials_again(tmp_path, data, monkeypatch):
    settings = config_file(tmp_path, "[tune]\nlearning_rate = [1e-3, 1e-1]\nhead_units = [16, 32, 64]\n")
    settings.write_text(settings.read_text().replace("epochs = 20", "epochs = 3"))
    out = tmp_path / "t"
    args = ["tune", data, "--config", settings, "--trials", 4, "--folds", 2, "--out", out, "-q"]
    killed = subprocess.run([sys.executable, "-c", KILLER, "5", *map(str, args)], capture_output=True, text=True,
                            check=False, timeout=300)  # killed as trial 3 starts its first fold
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = json.loads((out / "tune.json").read_text())
    assert [trial["number"] for trial in before["trials"]] == [1, 2] and before["state"] == "running"
    started = json.loads((out / "keras_tuner" / "trial_2" / "trial.json").read_text())
    assert started["status"] == "RUNNING"

    fits = []
    fit_fold = tlkit.training.cv._fit_fold
    monkeypatch.setattr(tlkit.training.cv, "_fit_fold", lambda *a: fits.append(1) or fit_fold(*a))
    done = invoke(args)  # the same command again
    assert done.exit_code == 0, done.output
    assert len(fits) == 2 * 2  # trial 3 again, then trial 4: 2 folds each
    after = json.loads((out / "tune.json").read_text())
    assert [trial["number"] for trial in after["trials"]] == [1, 2, 3, 4] and after["state"] == "trials"
    assert after["trials"][:2] == before["trials"]  # kept, not run again
    assert after["trials"][2]["hyperparameters"] == started["hyperparameters"]["values"]  # the trial cut short
    assert len({json.dumps(trial["hyperparameters"], sort_keys=True) for trial in after["trials"]}) == 4
    assert "4 of 4 trial(s) finished, 2 in this run" in done.output

    again = invoke(args)
    assert again.exit_code == 0 and "4 of 4 trial(s) finished, 0 in this run" in again.output
    assert json.loads((out / "tune.json").read_text())["trials"] == after["trials"]


@pytest.mark.backend_independent  # search logic; each backend fits heads in test_cv and the test above
def test_no_trial_starts_after_the_time_budget(tmp_path, data, config, monkeypatch):
    space, out = {"learning_rate": [1e-3, 1e-1]}, tmp_path / "t"
    spent = tune(data, config, space=space, trials=3, folds=2, out=out, time_budget=0)
    assert (spent.ran, spent.trials, spent.stopped, spent.best_config) == (0, [], "time budget", None)
    record = json.loads((out / "tune.json").read_text())
    assert record["time_budget"] == 0 and record["state"] == "time budget" and record["trials"] == []

    score_folds = tlkit.training.tune.score_folds
    monkeypatch.setattr(tlkit.training.tune, "score_folds", lambda *a, **k: time.sleep(2) or score_folds(*a, **k))
    one = tune(data, config, space=space, trials=3, folds=2, out=out, time_budget=1.5)
    assert (one.ran, len(one.trials), one.stopped) == (1, 1, "time budget")  # started in time, none after it
    assert one.best_config == out / "best.toml" and one.best == one.trials[0]
    rest = tune(data, config, space=space, trials=3, folds=2, out=out)
    assert (rest.ran, [trial["number"] for trial in rest.trials], rest.stopped) == (2, [1, 2, 3], "trials")


@pytest.mark.backend_independent
def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path, data, config, monkeypatch):
    scored = []

    def score_folds(pool, settings, folds, **kwargs):  # trial 1 diverges, the others score by their rate
        scored.append(settings.fit.learning_rate)
        loss = float("nan") if len(scored) == 1 else settings.fit.learning_rate
        return [{"val_loss": loss, "val_accuracy": 0.5 + fold / 10, "val_images": 10 + 10 * fold} for fold in range(folds)]

    monkeypatch.setattr(tlkit.training.tune, "score_folds", score_folds)
    result = tune(data, config, space={"learning_rate": [1e-3, 1e-1]}, trials=3, folds=2, out=tmp_path / "t")
    first, *others = json.loads((tmp_path / "t" / "tune.json").read_text())["trials"]  # valid JSON: no NaN
    assert first["status"] == "failed" and first["val_loss"] is None and first["fold_val_loss"] == [None, None]
    assert [trial["status"] for trial in others] == ["completed"] * 2 and result.stopped == "trials"
    assert result.ranking == sorted([2, 3], key=lambda number: scored[number - 1])
    assert others[0]["val_accuracy"] == pytest.approx(0.55) and others[0]["val_accuracy_std"] == pytest.approx(0.05)
    # the interval is the pooled held-out accuracy's: (0.5 * 10 + 0.6 * 20) right of 30 images
    assert others[0]["val_accuracy_ci95"] == pytest.approx(list(wilson(17 / 30, 30))) and first["val_accuracy_ci95"] is None
    assert load_config(result.best_config).fit.learning_rate == min(scored[1:])


@pytest.mark.backend_independent  # search logic; each backend fits heads in test_cv and the test above
def test_another_search_in_the_same_folder_is_refused(tmp_path, data, config):
    out = tmp_path / "t"
    tune(data, config, space={"dropout": [0.0, 0.5]}, trials=1, folds=2, out=out)
    other = make_dataset(tmp_path / "other", per_class=4)
    for kwargs, message in [({"data": other}, "holds a search with another data"),
                            ({"config": config.replace(fit={"epochs": 3})}, "holds a search with epochs = 2, not 3"),
                            ({"space": {"dropout": [0.0, 0.4]}}, "holds a search with another space"),
                            ({"folds": 3}, "holds a search with another folds")]:
        arguments = {"data": data, "config": config, "space": {"dropout": [0.0, 0.5]}, "folds": 2, **kwargs}
        with pytest.raises(tlkit.TlkitError, match=message):
            tune(arguments.pop("data"), arguments.pop("config"), trials=2, out=out, **arguments)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(tlkit.TlkitError, match="is not empty and holds no tlkit tune search"):
        tune(data, config, trials=1, folds=2, out=tmp_path / "full")


@pytest.mark.backend_independent
@pytest.mark.parametrize("table, message", [
    ("[tune]\nfoo = [1, 2]\n", "unknown name 'foo' in [tune]; known: learning_rate, head_units"),
    ("[tune]\nlearning_rate = [1e-2, 1e-4]\n", "[tune] learning_rate must be a range [low, high] of two numbers"),
    ("[tune]\nlearning_rate = [0.0, 1e-2]\n", "[tune] learning_rate is searched on a log scale"),
    ("[tune]\ndropout = [0.0, 1.5]\n", "[tune] dropout: invalid dropout: 1.5; expected a rate in [0, 1)"),
    ("[tune]\noptimizer = [\"adam\", \"lion\"]\n", "[tune] optimizer: invalid optimizer: 'lion'"),
    ("[tune]\nhead_units = [64, 64.5]\n", "[tune] head_units must be a list of distinct int choices"),
    ("[tune]\nbatch_size = 32\n", "[tune] batch_size must be a list of distinct int choices, got 32"),
    ("tune = 3\n", "must be a table of hyperparameter ranges, got 3"),
    ("[tune]\n", "[tune] names nothing to search"),
])
def test_a_bad_tune_table_is_one_line(tmp_path, data, table, message):
    done = invoke(["tune", data, "--config", config_file(tmp_path, table), "--out", tmp_path / "t"])
    assert done.exit_code == 1 and len(done.output.splitlines()) == 1, done.output
    assert done.output.startswith("Error: ") and message in done.output and "Traceback" not in done.output
    assert not (tmp_path / "t").exists() and not (tmp_path / "default-cache").exists()  # refused before any work


@pytest.mark.backend_independent
@pytest.mark.parametrize("args, code, message", [
    (["--time-budget", "soon"], 2, "invalid time budget: 'soon'; expected seconds, or a number with s, m or h"),
    (["--time-budget", "-5"], 2, "invalid time budget: '-5'"),
    (["--algorithm", "hyperband"], 2, "Invalid value for '--algorithm'"),
    (["--out", "t/deeper"], 1, "folder not found for t/deeper"),
])
def test_bad_options_are_one_line(tmp_path, data, args, code, message):
    done = invoke(["tune", data, "--config", config_file(tmp_path, "[tune]\ndropout = [0.0, 0.5]\n"), *args])
    assert done.exit_code == code and len(done.output.splitlines()) == 1, done.output
    assert message in done.output and "Traceback" not in done.output


@pytest.mark.backend_independent
@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("1.5h", 5400), ("0", 0)])
def test_time_budgets_read_as_seconds(text, seconds):
    from tlkit.training.tune_space import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.backend_independent
def test_bayesian_search_without_scikit_learn_is_one_line(tmp_path, data, config, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if it were not installed
    with pytest.raises(tlkit.TlkitError, match="the bayesian algorithm needs scikit-learn, which does not import"):
        tune(data, config, trials=1, folds=2, algorithm="bayesian", out=tmp_path / "t")
    assert not (tmp_path / "t").exists()  # refused before any work
