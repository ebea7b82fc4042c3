"""Learning-rate schedules: each rate as its formula gives it, recorded per epoch, drawn, and resumed exactly."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tlkit
from tlkit.cli import main
from tlkit.config import FitConfig
from tlkit.plots import curves
from tlkit.training.callbacks import Plateau, epoch_schedule, rate_callback

from conftest import COLOURS, make_dataset, write_image
from test_resume import assert_same_training, history, kill_during_training


def rates_of(run) -> list[list[float]]:
    return [phase["history"]["learning_rate"] for phase in history(run)]


def test_step_decay_is_the_classic_formula_at_every_epoch():
    fit = FitConfig(lr_drop=0.5, lr_drop_every=3)
    schedule = epoch_schedule("step", 0.01, 12, fit)
    for epoch in range(12):
        assert schedule(epoch) == pytest.approx(0.01 * 0.5 ** math.floor((1 + epoch) / 3), rel=1e-6)


def test_cosine_warms_up_linearly_then_reaches_its_floor_on_the_last_epoch():
    fit = FitConfig(lr_warmup_epochs=2, lr_floor=0.05)
    rates = [epoch_schedule("cosine", 0.3, 10, fit)(epoch) for epoch in range(10)]
    assert rates[:3] == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)  # lr * (e + 1) / (warmup + 1), then lr
    assert all(a > b for a, b in zip(rates[2:], rates[3:]))  # decays every epoch after the warm-up
    assert rates[-1] == pytest.approx(0.3 * 0.05, rel=1e-5)  # the floor, on the last epoch and not before
    assert rates[-2] > 0.3 * 0.05 * 1.5
    plain = [epoch_schedule("cosine", 0.3, 10, FitConfig(lr_floor=0.0))(epoch) for epoch in range(10)]
    assert plain[0] == pytest.approx(0.3) and plain[-1] == pytest.approx(0.0, abs=1e-9)
    assert plain[4] == pytest.approx(0.3 * 0.5 * (1 + math.cos(math.pi * 4 / 9)), rel=1e-5)


def test_plateau_halves_the_rate_after_patience_epochs_without_a_better_val_loss():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.4), loss="mse")
    plateau = rate_callback("plateau", 0.4, 10, FitConfig(lr_drop=0.5, lr_patience=2))
    plateau.set_model(model)
    plateau.on_train_begin()
    used = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.92, 0.91, 0.93, 0.5]):  # better, then 2 worse ...
        logs = {"val_loss": val_loss}
        plateau.on_epoch_end(epoch, logs)
        used.append(logs["learning_rate"])
    assert used == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1])
    assert plateau.state() == {"wait": 0, "best": 0.5, "cooldown": 0}
    resumed = Plateau(0.5, 2, saved={"wait": 1, "best": 0.5, "cooldown": 0})
    resumed.set_model(model)
    resumed.on_train_begin()
    assert (resumed.wait, resumed.best) == (1, 0.5)  # one more epoch without progress and it drops


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "d", ("blue", "red"), per_class=10)


@pytest.mark.backend_independent  # the resume tests below set and restore the rate on every backend
def test_every_run_records_the_rate_of_each_epoch_and_draws_it_under_the_curves(tmp_path, data, config):
    config = config.replace(fit={"mode": "finetune", "epochs": 4, "warmup_epochs": 3, "lr_schedule": "step",
                                 "lr_drop_every": 2, "finetune_lr_schedule": "cosine", "lr_floor": 0.1,
                                 "finetune_learning_rate": 1e-4})
    result = tlkit.train(data, config, run_dir=tmp_path / "run", verbose=0)
    warmup, finetune = rates_of(result.run_dir)
    assert warmup == pytest.approx([1e-3, 5e-4, 5e-4], rel=1e-5)
    assert finetune[0] == pytest.approx(1e-4, rel=1e-5) and finetune[-1] == pytest.approx(1e-5, rel=1e-4)
    header = (result.run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "learning_rate" in header
    drawn = curves(history(result.run_dir), 0.6)
    assert drawn.learning_rates == pytest.approx(warmup + finetune)
    assert Image.open(result.run_dir / "curves.png").size == (1100, 600)  # a learning-rate panel under the curves
    plain = config.replace(fit={"mode": "features", "epochs": 2, "lr_schedule": "constant"})
    constant = tlkit.train(data, plain, run_dir=tmp_path / "c", verbose=0)
    assert rates_of(constant.run_dir) == [pytest.approx([1e-3, 1e-3])]


@pytest.mark.backend_independent  # on every backend: the plateau's resume below (its rate and counters restored)
def test_a_killed_run_resumes_its_schedules_to_the_identical_history(tmp_path, data, config):
    config = config.replace(fit={"mode": "finetune", "epochs": 4, "warmup_epochs": 3, "lr_schedule": "cosine",
                                 "lr_warmup_epochs": 1, "finetune_lr_schedule": "cosine", "learning_rate": 1e-2})
    whole = tlkit.train(data, config, run_dir=tmp_path / "whole", verbose=0)
    killed = tmp_path / "killed"
    kill_during_training(data, killed, config, "batch:1:2:0")  # fine-tuning, in its third epoch
    resumed = CliRunner().invoke(main, ["train", str(data), "--run-dir", str(killed), "--resume"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming phase 2 after epoch 2" in resumed.output
    assert_same_training(killed, whole.run_dir)
    assert rates_of(killed) == rates_of(whole.run_dir)
    assert len(set(rates_of(killed)[1])) == 4  # a rate of its own every epoch


def test_a_killed_plateau_schedule_resumes_with_its_counters(tmp_path, config):
    contrary = make_dataset(tmp_path / "c", ("blue", "red"), per_class=8, splits=["train"])
    for name, colour in (("blue", "red"), ("red", "blue")):  # validation gets worse as training gets better
        for i in range(4):
            write_image(contrary / "validation" / name / f"{i}.jpg", COLOURS[colour], seed=100 + i)
    config = config.replace(fit={"epochs": 6, "lr_schedule": "plateau", "lr_patience": 2, "learning_rate": 1e-2})
    whole = tlkit.train(contrary, config, run_dir=tmp_path / "whole", verbose=0)
    (rates,) = rates_of(whole.run_dir)
    assert rates == pytest.approx([1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3])
    killed = tmp_path / "killed"
    kill_during_training(contrary, killed, config, "batch:0:4:0")  # one epoch after the first drop
    state = json.loads((killed / "checkpoint" / "state.json").read_text())["current"]
    assert state["schedule"]["wait"] == 1
    resumed = CliRunner().invoke(main, ["train", str(contrary), "--run-dir", str(killed), "--resume"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert_same_training(killed, whole.run_dir)
    assert rates_of(killed) == [pytest.approx(rates, rel=1e-7)]


@pytest.mark.backend_independent
def test_schedule_options_are_on_the_command_line_and_checked(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(main, ["train", "--help"]).output
    for flag in ("--lr-schedule", "--finetune-lr-schedule", "--lr-warmup-epochs", "--lr-floor", "--lr-drop ",
                 "--lr-drop-every", "--lr-patience"):
        assert flag in shown
    assert "[constant|step|cosine|plateau]" in shown
    bad = runner.invoke(main, ["train", str(tmp_path), "--lr-schedule", "exponential"])
    assert bad.exit_code == 2 and "exponential" in bad.output
    drop = runner.invoke(main, ["train", str(tmp_path), "--lr-drop", "1"])
    assert drop.exit_code == 1 and drop.output.strip() == "Error: invalid lr_drop: 1.0; expected a factor in (0, 1)"
    assert np.isclose(tlkit.Config().replace(fit={"lr_drop": 0.25}).fit.lr_drop, 0.25)
