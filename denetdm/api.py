"""The Python entry points: a finished run's config, records, results and models; a sweep's runs as rows.

import denetdm
run = denetdm.load_run("outputs/cmnist/2026-12-01_10-00-00")
run.results["test/acc_unbiased"], run.epochs[-1], run.config["seed"]
model = run.model()                    # the final phase's selected model, in eval mode, on the CPU
logits = model.predict(run.data().test.x[:8])["target"]
rows = denetdm.load_sweep("multirun/cmnist/2026-12-01")   # one dict per finished run
"""

from dataclasses import dataclass, field
from pathlib import Path

from denetdm.errors import DataError
from denetdm.reporting.runs import collect


@dataclass
class LoadedRun:
    """One finished run directory: its resolved config, results.json, per-epoch records and models."""

    path: Path
    results: dict
    epochs: list[dict] = field(repr=False)
    _data: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        r = self.results
        depths = ", ".join(map(str, r.get("depths") or []))
        objective = r.get("objective")
        shown = f"{100 * objective:.2f} %" if isinstance(objective, float) else objective
        return (
            f"LoadedRun({str(self.path)!r}: {r.get('method_label')} ({depths}) on {r.get('dataset', {}).get('name')}, "
            f"seed {r.get('seed')}, selection={r.get('selection')}, {r.get('objective_key')} {shown}, "
            f"{len(self.epochs)} epoch records)"
        )

    @property
    def config(self) -> dict:
        """The run's resolved config (as results.json holds it)."""
        return self.results["config"]

    def data(self):
        """The run's dataset (from the cache where it was made before), on the CPU; loaded once."""
        from denetdm.checks import instantiate_checked

        if self._data is None:
            self._data = instantiate_checked(self.config["dataset"]).load().to("cpu")
        return self._data

    def model(self, phase: str | None = None):
        """The selected model of `phase` (default: the method's final phase), in eval mode on the CPU; its
        `predict(x)` gives logits by head name."""
        from denetdm.training.checkpoint import load_checkpoint
        from denetdm.training.phases import rebuild
        from denetdm.training.pipeline import context

        phase = phase or self.config["method"]["final"]["phase"]
        path = self.path / "checkpoints" / f"{phase}_selected.pt"
        if not path.exists():
            phases = sorted(p.name.removesuffix("_selected.pt") for p in path.parent.glob("*_selected.pt"))
            raise DataError(f"{self.path} has no selected {phase} model; it has: {', '.join(phases) or 'none'}")
        ckpt = load_checkpoint(path)
        method = rebuild(ckpt["meta"]["method"], phase, context(self.data(), ckpt["meta"]["model"]))
        method.load_state_dict(ckpt["method"])
        return method.eval()


def load_run(path: str | Path) -> LoadedRun:
    """A finished run (a directory with results.json), or one clear error."""
    coll = collect([path])
    runs = [r for r in coll.runs if r.path == Path(path).resolve()]
    if not runs:
        why = dict(coll.incomplete).get(Path(path).resolve(), "no results.json")
        raise DataError(f"{path} is not a finished run ({why}); give a run directory, or load_sweep for a sweep")
    return LoadedRun(runs[0].path, runs[0].results, runs[0].epochs())


def load_sweep(path: str | Path) -> list[dict]:
    """Every finished run below `path`, a dict each: run, method, seed, depths, selection, the swept parameters
    (`params`), the objective and every final metric (`<split>/<metric>`); ready for pandas.DataFrame(rows)."""
    rows = []
    for r in collect([path]).runs:
        row = {"run": str(r.path), "method": r.method_name, "seed": r.results.get("seed"), "depths": r.depths}
        row |= {"selection": r.selection, "params": (r.config.get("trial") or {}).get("params") or {}}
        row |= {"objective": r.objective}
        row |= {k: v for k, v in r.results.items() if k.count("/") == 1 and isinstance(v, int | float)}
        rows.append(row)
    return rows
