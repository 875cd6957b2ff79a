"""Pruning sweep trials (`hydra.sweeper.pruner`): each epoch of the objective's phase, a job reports the current
value of the objective's metric to its Optuna trial through the study's storage, and stops after that epoch's
checkpoint when the pruner says so. The run directory then holds `pruned.json` instead of results.json.
"""

import math
import os
import re
from pathlib import Path
from typing import Any

from denetdm.errors import ConfigError, DenetdmError
from denetdm.files.jsonlines import write_json

# the named pruners: what `hydra.sweeper.pruner=<name>` builds (a node with `_target_` builds any other)
PRUNERS = {
    "median": ("optuna.pruners.MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 2}),
    "successive_halving": ("optuna.pruners.SuccessiveHalvingPruner", {}),
}


class TrialPruned(DenetdmError):
    """The sweeper's pruner stopped this trial after an epoch: not a failure."""


def build_pruner(spec: Any) -> Any:
    """An Optuna pruner from `hydra.sweeper.pruner`: null (none), a name of PRUNERS, or a node with `_target_`."""
    if spec is None:
        return None
    if callable(getattr(spec, "prune", None)):  # Hydra already built the node of the sweeper's config
        return spec
    from hydra.utils import instantiate

    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise ConfigError(
                f"hydra.sweeper.pruner must be null, {' or '.join(PRUNERS)}, or a node with _target_, got {spec!r}"
            )
        target, kwargs = PRUNERS[spec]
        return instantiate({"_target_": target, **kwargs})
    try:
        return instantiate(spec)
    except Exception as e:
        raise ConfigError(f"hydra.sweeper.pruner could not be built: {e}".splitlines()[0]) from None


SECRET = re.compile(r"(?<=://)([^/@:\s]*):([^@/\s]+)@")  # scheme://user:password@host


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by *** (a storage URL such as
    postgresql://user:password@host/db is logged, saved and uploaded in many places)."""
    return SECRET.sub(r"\1:***@", text)


def study_storage(storage: str | None, sweep_dir: str | Path, launcher: object = None) -> str:
    """The study's storage URL: the one given; `journal`: journal:<sweep dir>/study.journal; else SQLite in
    `<sweep dir>/study.db` (what makes a sweep resumable), or the journal file where trials run on a cluster's nodes
    (`launcher`: hydra.launcher's _target_), since SQLite's file locks do not hold across them."""
    if storage == "journal" or (storage is None and on_cluster(launcher)):
        return f"journal:{(Path(sweep_dir) / 'study.journal').resolve()}"
    return storage or f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def on_cluster(launcher: object) -> bool:
    """Whether a launcher (hydra.launcher's _target_) runs trials on other machines: SLURM's."""
    return "SlurmLauncher" in str(launcher)


# the pip package of a database driver that SQLAlchemy imports under another name
DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}


def check_storage(url: str, key: str = "hydra.sweeper.storage", cluster: bool = False) -> None:
    """A storage Optuna can open from this machine (a journal file's folder is writable, a database URL parses
    and its driver is installed) and, for trials on a cluster's nodes, not SQLite; else one ConfigError that says
    what to do."""
    where = f"{key}={redact(url)}"
    if cluster and url.startswith("sqlite"):
        raise ConfigError(
            f"{where}: SQLite's file locks do not hold on the network filesystems a cluster's nodes share, so a study "
            "written from several nodes gets corrupted; use journal:<file on the shared filesystem> or a server "
            "(postgresql+psycopg://user@host/db, the password in PGPASSWORD or ~/.pgpass)"
        )
    if url.startswith("journal:"):
        folder = Path(url.removeprefix("journal:")).expanduser().parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ConfigError(f"{where}: the folder {folder} does not exist or is not writable; give a writable path")
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError) as e:
        raise ConfigError(
            f"{where} is not a storage URL ({e}); give sqlite:///<file>, postgresql://..., journal or journal:<file>"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise ConfigError(
            f"{where} needs the database driver {e.name!r}, which is not installed: pip install "
            f"{DRIVERS.get(e.name, e.name)} (or name an installed driver in the URL, e.g. postgresql+psycopg2://)"
        ) from None


def open_storage(url: str | None) -> Any:
    """What Optuna takes as a storage: the URL itself, or for journal:<file> Optuna's journal file storage (an
    append-only log with file locks: safe where SQLite is not, on network filesystems)."""
    if not url or not url.startswith("journal:"):
        return url
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    except OSError as e:
        raise ConfigError(
            f"the study journal {url.removeprefix('journal:')} cannot be opened ({e.strerror or e})"
        ) from None


class Reporter:
    """Reports `key` of each epoch of `phase` to trial `number` of the study and raises TrialPruned when told."""

    def __init__(self, storage: str, study: str, number: int, pruner: Any, phase: str, key: str, run_dir: Path):
        import optuna

        loaded = optuna.load_study(study_name=study, storage=open_storage(storage), pruner=build_pruner(pruner))
        trial_id = loaded._storage.get_trial_id_from_study_id_trial_number(loaded._study_id, number)
        self.trial = optuna.trial.Trial(loaded, trial_id)  # the sweeper's trial, reported to from this process
        self.phase, self.key, self.run_dir = phase, key, Path(run_dir)

    def __call__(self, stage: str, epoch: int, record: dict) -> None:
        value = record.get(self.key)
        if stage != self.phase or not isinstance(value, float) or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            note = {"pruned": True, "phase": stage, "epoch": epoch, "key": self.key, "value": value}
            write_json(self.run_dir / "pruned.json", note)
            raise TrialPruned(f"pruned by the sweeper after epoch {epoch} of {stage} ({self.key} = {value:.4f})")
