"""What a run is: the data and the dataset's files, the weights, the settings and the run it starts from.

Each fact is computed once, when a run starts or resumes (:meth:`RunIdentity.of`), and used from there:
the checkpoint records it, a resume compares it with what is found now (:func:`check_resume`), and the
processes of a job compare its digests before training (:func:`tlkit.backends.devices.all_or_none`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tlkit.backbone import weights_identity
from tlkit.config import Config
from tlkit.data.index import DatasetIndex
from tlkit.errors import TlkitError
from tlkit.io import relative_name

log = logging.getLogger("tlkit")


@dataclass(frozen=True)
class RunIdentity:
    """The facts that make two trainings the same run.

    Attributes:
        data: The dataset folder, resolved.
        dataset: SHA-256 of the dataset's files by name (relative to the folder) and size (and, for labels
            from a CSV, each file's split and label). Times are
            left out, so a dataset copied to another disk or machine (a preempted job restarting
            elsewhere) still matches; a file added, removed, renamed or resized does not.
        weights: The weights' identity (:func:`tlkit.backbone.weights_identity`).
        settings: SHA-256 of the settings that are the run's, not the machine's, with the weights by
            their identity wherever their file is.
        from_run: The run it starts from (``--from``), resolved, or ``None``.
    """

    data: str
    dataset: str
    weights: str
    settings: str
    from_run: str | None

    @classmethod
    def of(cls, data: str | Path, index: DatasetIndex, config: Config, from_run: str | Path | None) -> RunIdentity:
        """The identity of a run of ``config`` on ``index`` (scanned from ``data``).

        Raises:
            TlkitError: If the weights file is missing.
        """
        records = [[relative_name(path, index.root), path.stat().st_size] for path in index.all_files()]
        if index.labels_file is not None:  # labels from a CSV: a label or split changed there is other data
            records += [[split, relative_name(path, index.root), index.label_text(label)]
                        for split, paths in index.files.items() for path, label in zip(paths, index.labels[split])]
        weights = weights_identity(config.model.weights)
        settings = config.run_settings()
        settings["model"]["weights"] = weights
        return cls(resolved(data), _sha256(records), weights, _sha256(settings), resolved(from_run))

    def digests(self) -> dict[str, str]:
        """What every process of a job must agree on, by what it is called in an error."""
        return {"their dataset files": self.dataset, "their settings": self.settings}


def check_resume(run: Path, recorded: dict, saved: Config, now: RunIdentity, config: Config) -> Config:
    """The config to resume ``run`` with; refuses a resume whose data, dataset or settings differ from its start.

    Args:
        run: The run folder.
        recorded: The identity the run's checkpoint recorded (``data``, ``dataset``, ``weights``, ``from_run``).
        saved: The config the run was started with.
        now: The identity found now.
        config: The config given now; its machine settings (:meth:`Config.machine_settings`) are taken.

    Raises:
        TlkitError: Naming what differs.
    """
    if now.from_run != recorded["from_run"]:
        raise TlkitError(f"run {run} was started with --from {recorded['from_run']}, not {now.from_run}")
    if now.dataset != recorded["dataset"]:
        raise TlkitError(f"the files of {now.data} are not those run {run} started on ({recorded['data']}): files "
                         "were added, removed or changed since; start a new run (without --resume)")
    if now.data != recorded["data"]:
        log.info("run %s started on %s; the same files are now in %s", run, recorded["data"], now.data)
    resumed = saved.with_machine_settings(config)
    ours, theirs = config.to_dict(), resumed.to_dict()
    changed = [f"{name}={theirs[section][name]!r} (not {value!r})" for section, values in ours.items()
               for name, value in values.items() if theirs[section][name] != value]
    if changed:
        raise TlkitError(f"run {run} was started with {', '.join(changed)}; resume it with the same options")
    if now.weights != recorded["weights"]:
        raise TlkitError(f"the weights file {config.model.weights} changed since run {run} started; "
                         "start a new run (without --resume)")
    return resumed


def difference(recorded: dict, saved: Config, now: RunIdentity) -> str | None:
    """How a run recorded as ``recorded`` (its checkpoint's identity) with ``saved`` settings differs from the
    run ``now`` would start: ``"other data"``, ``"other settings"``, or ``None`` when it is the same run."""
    if (now.data, now.dataset) != (recorded["data"], recorded["dataset"]):
        return "other data"
    settings = saved.run_settings()
    settings["model"]["weights"] = recorded["weights"]
    if (now.settings, now.weights, now.from_run) != (_sha256(settings), recorded["weights"], recorded["from_run"]):
        return "other settings"
    return None


def resolved(path: str | Path | None) -> str | None:
    """``path`` made absolute (``None`` stays)."""
    return None if path is None else str(Path(path).resolve())


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
