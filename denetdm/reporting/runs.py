"""Finding finished and unfinished runs below run and sweep directories (what sweep.py reads)."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from denetdm.errors import DataError
from denetdm.files.jsonlines import JsonLines
from denetdm.fingerprint import drop, fingerprint, last_phase, setting
from denetdm.reporting import store
from denetdm.reporting.summary import objective

BIAS_LABEL_MARK = " [bias labels]"  # a method that trains with bias labels


@dataclass
class Run:
    """One finished run: its directory and its results.json."""

    path: Path
    results: dict

    @property
    def config(self) -> dict:
        """The run's resolved config."""
        return self.results.get("config") or {}

    @property
    def objective(self) -> float:
        """The sweep objective (what the run's selection protocol lets it read; see reporting.summary.objective)."""
        return objective(self.results)

    @property
    def selection(self) -> str:
        """The selection protocol's name."""
        return self.results.get("selection")

    @property
    def is_eval(self) -> bool:
        """A stage=eval run (it trained nothing)."""
        return "eval" in (self.results.get("stages") or [])

    @property
    def pair(self) -> tuple[int, int]:
        """(shallow depth, deep depth)."""
        model = self.config.get("model", {})
        return int(model["shallow"]["depth"]), int(model["deep"]["depth"])

    @property
    def method(self) -> str:
        """The method's label, marked when it trains with bias labels."""
        return self.results["method_label"] + (BIAS_LABEL_MARK if self.results.get("uses_bias_labels") else "")

    @property
    def method_name(self) -> str:
        """The method's name (conf/method/<name>.yaml)."""
        return self.results["method"]

    @property
    def depths(self) -> tuple[int, ...]:
        """The depths that tell this method's rows apart: the (shallow, deep) pair of DeNetDM, the depth of the
        one architecture a single-network method trains (`row_depths` in conf/method/, resolved in results.json)."""
        return tuple(self.results["depths"])

    @property
    def fingerprint(self) -> str:
        """Everything in the config that changes the numbers (denetdm.fingerprint), as a comparable string."""
        return json.dumps(fingerprint(self.config, last_phase(self.config, self.results.get("stages"))), sort_keys=True)

    @property
    def setting(self) -> str:
        """The fingerprint without the seed: runs with equal settings are repeats over seeds."""
        return json.dumps(setting(self.config, self.results.get("stages") or []), sort_keys=True)

    @property
    def fixed(self) -> dict:
        """The setting less the hyperparameters an Optuna sweep sampled for the run (its trial's params), which a
        table cell chooses among by the objective, and less the depths its row names."""
        trial = self.config.get("trial") or {}
        out = setting(self.config, self.results.get("stages") or [])
        searched = (trial.get("params") or {}) if trial.get("number") is not None else {}
        for key in [
            *searched,
            *(f"model.{p}.depth" for p in (self.config.get("method") or {}).get("row_depths") or []),
        ]:
            drop(out, key)
        return out

    @property
    def trial(self) -> int | None:
        """The Optuna trial number (None outside an Optuna sweep)."""
        return (self.config.get("trial") or {}).get("number")

    def at_last_epoch(self, key: str) -> float | None:
        """`key` at the last epoch of its phase (from the per-epoch curves), whatever epoch the run selected; a key
        of the final model (`test/acc_unbiased`) is read from the final phase's head (conf/method/: `final`)."""
        if key.count("/") == 1:
            final = self.config["method"]["final"]
            key = f"{final['phase']}/{final['head']}/{key}"
        values = [e[key] for e in self.epochs() if key in e]
        return values[-1] if values else None

    def epochs(self) -> list[dict]:
        """The per-epoch records of metrics.jsonl (empty when the file is gone); a store record's curves."""
        if self.path.name.endswith(store.SUFFIX):
            return store.epochs_of(self.results)
        return [e for e in JsonLines(self.path / "metrics.jsonl").read() if is_epoch(e)]  # a damaged line: skipped


@dataclass
class Collection:
    """The runs below some directories, and the run directories that have no results (yet)."""

    runs: list[Run] = field(default_factory=list)
    incomplete: list[tuple[Path, str]] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        """A path relative to the root it was found under (for stable, short listings)."""
        for root in self.roots:
            if path == root or root in path.parents:
                return str(Path(root.name) / path.relative_to(root))
        return str(path)


def _why_incomplete(job: Path) -> str:
    if (job / "pruned.json").exists():  # stopped by the sweeper's pruner: not a failure
        try:
            note = json.loads((job / "pruned.json").read_text())
            return f"pruned after epoch {note['epoch']} of {note['phase']} ({note['key']} = {note['value']:.4f})"
        except (ValueError, KeyError):
            return "pruned"
    if (job / "failed.json").exists():  # the error that stopped it (run.py)
        try:
            return "failed: " + str(json.loads((job / "failed.json").read_text())["error"])
        except (ValueError, KeyError, TypeError):
            return "failed (its failed.json is damaged)"
    if (job / "metrics.jsonl").exists():
        return "stopped during training (metrics.jsonl but no results.json; run it again to resume)"
    return "no results.json"


def collect(dirs: list[str | Path]) -> Collection:
    """Every run below `dirs`: a directory with results.json is a run, and so is a store record
    (`*.record.json`, denetdm.reporting.store); a directory with .hydra/ but no results.json is listed as incomplete
    (failed, stopped or still running)."""
    out = Collection(roots=[Path(d).resolve() for d in dirs])
    for root in out.roots:
        if not root.is_dir():
            raise DataError(f"{root} is not a directory; give run or sweep directories (outputs/..., multirun/...)")
        jobs = {p.parent for p in root.rglob("results.json")} | {p.parent for p in root.rglob(".hydra")}
        for job in sorted(jobs, key=lambda p: (len(p.parts), str(p))):
            res = job / "results.json"
            if not res.exists():
                out.incomplete.append((job, _why_incomplete(job)))
                continue
            try:
                results = json.loads(res.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                results = None
            if is_results(results):
                out.runs.append(Run(job, results))
            else:
                out.incomplete.append((job, "damaged: results.json is not a results file; run it again to rewrite it"))
        out.runs += [Run(path, store.read(path)) for path in sorted(root.rglob(f"*{store.SUFFIX}"))]
    out.runs.sort(key=lambda r: _natural(r.path))
    out.incomplete.sort(key=lambda j: _natural(j[0]))
    return out


def is_results(obj: Any) -> bool:
    """Whether a parsed results.json has what every reader takes for granted (a hand-edited or cut file may not)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        return False
    depths = obj.get("depths")
    return isinstance(depths, list) and all(isinstance(d, int) for d in depths) and "method_label" in obj


def is_epoch(record: Any) -> bool:
    """Whether a metrics.jsonl line is an epoch's record (a stage name and an epoch number)."""
    return isinstance(record, dict) and isinstance(record.get("stage"), str) and type(record.get("epoch")) is int


def _natural(path: Path) -> list[Any]:
    # 2 before 10 in job numbers
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def trial_records(sweep_dir: Path) -> list[dict]:
    """The sweepers' trials.jsonl records below `sweep_dir` (several workers' folders of one study included),
    one per (study, trial number), in trial order; [] when there are none."""
    rows: dict[tuple, dict] = {}
    for path in sorted(Path(sweep_dir).rglob("trials.jsonl")):
        for row in JsonLines(path).read():  # skips a line cut by a crash
            if is_trial(row):
                rows.setdefault((row.get("study"), row["number"]), row)
    return sorted(rows.values(), key=lambda r: (str(r.get("study")), r["number"]))


def is_trial(row: Any) -> bool:
    """Whether a trials.jsonl line is a trial (number, state, params and value as the sweeper writes them)."""
    if not isinstance(row, dict) or type(row.get("number")) is not int or not isinstance(row.get("state"), str):
        return False
    return isinstance(row.get("params"), dict) and (row.get("value") is None or finite(row.get("value")))


def objective_key(runs: list[Run]) -> str:
    """The results key the runs' objective reads (one per sweep), or `objective` where it differs or is unknown."""
    keys = {r.results.get("objective_key") for r in runs}
    return keys.pop() if len(keys) == 1 and None not in keys else "objective"


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, int | float) and math.isfinite(value)
