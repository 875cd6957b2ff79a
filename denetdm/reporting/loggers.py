"""The experiment trackers beside the files: none, or W&B (offline unless WANDB_MODE says otherwise, always
finished), and the summary run of a sweep."""

import hashlib
import json
import logging
import math
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from denetdm.errors import ConfigError
from denetdm.files.jsonlines import write_json

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nowhere (logger=none)."""

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None) -> None:
        pass

    def __enter__(self) -> "NullLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def log(self, stage: str, epoch: int, record: dict) -> None:
        """Per-epoch metrics of a stage."""

    def summary(self, results: dict) -> None:
        """Final results."""

    def image(self, key: str, path: Path) -> None:
        """A picture the run made (a PNG file)."""


def run_fields(config: dict) -> dict[str, str]:
    """What names a run: its method, dataset, severity, ratio, the depths of its table row, seed and selection."""
    method, dataset = config["method"], config["dataset"]
    pct, severity = dataset.get("conflict_pct"), dataset.get("severity")  # own data: neither is set
    return {
        "method": str(method["name"]),
        "dataset": str(dataset["name"]),
        "severity": "" if severity is None else str(severity),
        "conflict_pct": f"{pct:g}" if isinstance(pct, int | float) else "natural",  # null: the data's own ratio
        "ratio": f"{pct:g}pct" if isinstance(pct, int | float) else "natural",
        "depths": "-".join(str(config["model"][part]["depth"]) for part in method["row_depths"]),
        "seed": str(config["seed"]),
        "selection": str(config["selection"]),
    }


def run_group(config: dict) -> str:
    """The run's setting, readable: what a table cell compares (method, data, ratio, depths, schedule, every other
    key that changes numbers) without the seed, so W&B averages exactly the runs a table cell averages."""
    from denetdm.fingerprint import setting

    f = run_fields(config)
    stages = (config.get("stage") or {}).get("stages") or list(config["method"]["phases"])
    digest = hashlib.sha256(json.dumps(setting(config, stages), sort_keys=True).encode()).hexdigest()[:6]
    where = " ".join([f["dataset"], *[f"sev{f['severity']}"] * bool(f["severity"]), _ratio_text(f)])
    return f"{f['method']} {where} d{f['depths']} {f['selection']} #{digest}"


def _ratio_text(fields: dict[str, str]) -> str:
    return "natural ratio" if fields["conflict_pct"] == "natural" else f"{fields['conflict_pct']}%"


def auto_tags(config: dict, study: str | None) -> list[str]:
    """The tags every run gets (filters of the W&B table); logger.tags adds to them."""
    f = run_fields(config)
    tags = [f["dataset"], *[f"sev{f['severity']}"] * bool(f["severity"]), f"conflict{f['ratio']}"]
    tags.append(f"depths{f['depths']}")
    tags += [
        f["method"],
        f"selection-{f['selection']}",
        f"bias-labels-{bool(config['method'].get('uses_bias_labels'))}",
    ]
    return tags + ([short_tag(f"study-{study}")] if study else [])


def short_tag(tag: str) -> str:
    """A W&B tag of at most 64 characters (W&B refuses longer ones): a long one ends in a digest of its whole."""
    digest = hashlib.sha256(tag.encode()).hexdigest()[:6]
    return tag if len(tag) <= 64 else f"{tag[:57]}-{digest}"


def _run_name(template: str, fields: dict[str, str]) -> str:
    """A run's name from `logger.name`, a template of the run's fields."""
    try:
        return str(template).format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"logger.name: {template!r} is not a template of {{{'}, {'.join(fields)}}} ({e})") from None


def _checked_tags(tags: object) -> list[str]:
    """logger.tags: a list of words of 1-64 characters (W&B's limit), else one error line."""
    if tags is None:
        return []
    ok = (
        isinstance(tags, Sequence)
        and not isinstance(tags, str)
        and all(isinstance(t, str | int | float) and 0 < len(str(t)) <= 64 for t in tags)
    )
    if not ok:
        raise ConfigError(
            f"logger.tags must be a list of words of 1-64 characters, e.g. logger.tags=[mine], got {tags!r}"
        )
    return [str(t) for t in tags]


def _checked_options(log_checkpoints: object, init_timeout: object) -> tuple[bool, float]:
    if not isinstance(log_checkpoints, bool):
        raise ConfigError(f"logger.log_checkpoints must be true or false, got {log_checkpoints!r}")
    if not isinstance(init_timeout, int | float) or isinstance(init_timeout, bool) or not init_timeout > 0:
        raise ConfigError(f"logger.init_timeout must be a number of seconds > 0, got {init_timeout!r}")
    return log_checkpoints, float(init_timeout)


def _settings(verbose: bool, init_timeout: float):
    """W&B's settings for a run: quiet unless verbose, no console capture, no code, a new run per logger."""
    import wandb

    return wandb.Settings(
        console="off",
        quiet=not verbose,
        save_code=False,
        init_timeout=init_timeout,
        reinit="create_new",  # the members of a stack (launcher=stacked) each hold a run in one process
        x_disable_meta=_secret_in_command_line(),  # W&B uploads the command line with its metadata
    )


class WandbLogger(NullLogger):
    """One W&B run per job, offline unless WANDB_MODE says otherwise, always finished; grouped by setting, named
    from a template, with the run directory, command line and code version in its config."""

    def __init__(
        self,
        run_dir: str,
        run_config: dict,
        project: str = "denetdm",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        study: str | None = None,
        job_type: str | None = None,
        name: str = "{method}-{dataset}-{ratio}-d{depths}-seed{seed}",
        tags: list[str] | None = None,
        log_checkpoints: bool = False,
        init_timeout: float = 15.0,
        verbose: bool = False,
    ) -> None:
        for key, value in (("project", project), ("entity", entity), ("group", group), ("job_type", job_type)):
            if value is not None and not (isinstance(value, str) and value):
                raise ConfigError(f"logger.{key} must be a word (or null), got {value!r}")
        self.kwargs = dict(
            project=project,
            entity=entity,
            mode=mode,
            group=group or run_group(run_config),
            job_type=job_type,
            name=_run_name(name, run_fields(run_config)),
            tags=auto_tags(run_config, study) + _checked_tags(tags),
            config=run_config | {"run": _where(run_dir)},
            dir=str(run_dir),
        )
        self.run = None
        self.log_checkpoints, self.init_timeout = _checked_options(log_checkpoints, init_timeout)
        if not isinstance(verbose, bool):
            raise ConfigError(f"logger.verbose must be true or false, got {verbose!r}")
        self.verbose = verbose  # W&B's own lines: three where the run is saved, or all of them
        # one W&B run per run directory: its id (and the last step logged) are kept there, so a resumed run
        # continues the same W&B run, its steps going on from where they stopped
        self.state_path = Path(run_dir) / "wandb_run.json"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def __enter__(self) -> "WandbLogger":
        import wandb

        state = self._state()
        run_id = state.get("id") or secrets.token_hex(4)  # not a random choice of the experiment
        self.step = int(state.get("step", -1)) + 1
        # a resumed run: the epochs W&B already has are not logged again, the best values go on from theirs
        self.logged, self.best = dict(state.get("logged", {})), dict(state.get("best", {}))
        try:
            self.run = wandb.init(
                **self.kwargs,
                id=run_id,
                resume="allow",
                settings=_settings(self.verbose, self.init_timeout),
            )
            self._save_state()
            for k, v in self.best.items():  # a resumed run's summary starts from the best values so far
                self.run.summary[f"best/{k}"] = v
        except Exception as e:  # W&B is second: a broken W&B set-up must not stop the experiment
            said = (str(e).strip().splitlines() or [""])[0]
            log.warning("W&B logging is off for this run (%s: %s); files are written as usual", type(e).__name__, said)
            self.run = None
            return self
        self.stages: set[str] = set()  # phases whose metrics are plotted against their own epoch
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if exc_type is None else 1)
            self.run = None

    def _save_state(self) -> None:
        state = {"id": self.run.id, "step": self.step - 1, "logged": self.logged, "best": self.best}
        write_json(self.state_path, state)

    def log(self, stage: str, epoch: int, record: dict) -> None:
        if self.run is not None and epoch > self.logged.get(stage, 0):  # a redone epoch after a resume: W&B has it
            # the record's keys are already `<stage>/...` (denetdm.training.evaluation.metric_key)
            data = {k: v for k, v in record.items() if isinstance(v, int | float) and k.startswith(f"{stage}/")}
            if stage not in self.stages:
                self.stages.add(stage)
                self.run.define_metric(f"{stage}/epoch")
                self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")
            self.run.log({f"{stage}/epoch": epoch, **data}, step=self.step)
            self.step += 1
            self.logged[stage] = epoch
            # the best value of each validation curve so far, explicit in the summary (offline runs get
            # define_metric's summaries only when synced)
            for k, v in data.items():
                if k.split("/")[2:3] == ["val"] and math.isfinite(v) and v > self.best.get(k, -math.inf):
                    self.best[k] = self.run.summary[f"best/{k}"] = v
            self._save_state()

    def summary(self, results: dict) -> None:
        if self.run is not None:
            for k, v in results.items():
                if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
                    self.run.summary[k] = v
            if results.get("warnings"):  # the method's doubts about the run (a collapsed expert), as text
                self.run.summary["warnings"] = "\n".join(results["warnings"])
            if self.log_checkpoints:
                self._log_checkpoints()

    def _log_checkpoints(self) -> None:
        """The selected checkpoints of every phase as one W&B model artifact (logger.log_checkpoints=true)."""
        import wandb

        files = sorted((Path(self.kwargs["dir"]) / "checkpoints").glob("*_selected.pt"))
        if files:
            artifact = wandb.Artifact(f"checkpoints-{self.run.id}", type="model")
            for f in files:
                artifact.add_file(str(f))
            self.run.log_artifact(artifact)

    def image(self, key: str, path: Path) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})


def log_sweep_summary(
    sweep_dir: Path,
    table: tuple[list[str], list[list]],
    plots: list[Path],
    best: dict,
    project: str,
    group: str,
    mode: str,
) -> str:
    """One W&B run in the sweep's group holding the table of trials and the plots; returns its folder."""
    import wandb

    config = {"sweep_dir": str(Path(sweep_dir).resolve()), **{f"best/{k}": v for k, v in best.items()}}
    settings = wandb.Settings(console="off", save_code=False, quiet=True)
    try:
        run = wandb.init(
            project=project,
            group=group,
            job_type="sweep-summary",
            name=f"{group}-summary",
            dir=str(sweep_dir),
            mode=mode,
            config=config,
            settings=settings,
        )
    except Exception as e:  # W&B's own errors (a project name it refuses, no API key online): one line
        said = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"W&B did not start the summary run ({said}); the sweep's files are unchanged") from None
    try:
        columns, rows = table
        run.log({"trials": wandb.Table(columns=columns, data=rows), **{p.stem: wandb.Image(str(p)) for p in plots}})
        if "best_value" in best:
            run.summary["best_value"] = best["best_value"]
        return str(Path(run.dir).parent) if mode != "disabled" else "nowhere (W&B disabled)"
    finally:
        run.finish()


def _where(run_dir: str) -> dict:
    """The run directory, the command line (a storage password redacted) and the code version (git commit)."""
    from denetdm.provenance import commit
    from denetdm.sweeps.pruning import redact

    command = " ".join(redact(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    return {"dir": str(Path(run_dir).resolve()), "command": command, "commit": commit()}


def _secret_in_command_line() -> bool:
    """Whether a URL with a password (a sweep's storage) is on the command line."""
    from denetdm.sweeps.pruning import redact

    return any(redact(a) != a for a in sys.argv)
