"""An Optuna sweep's search space from `hydra.sweeper.params` and the command line, in hydra-optuna-sweeper's
grammar: `a,b` and `shuffle(...)` are categorical, `range(a,b[,step])` a stepped int (or float) distribution,
`interval(a,b)` a uniform one and `tag(log, interval(a,b))` a log-uniform one; a plain value is fixed.

One change from that plugin: `range` ends before its stop, as Hydra's (and Python's) range does, for every sampler;
the released plugin let TPE draw the stop itself while its grid left it out.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from denetdm.errors import ConfigError


def _choices(override: Override) -> CategoricalDistribution:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    for v in values:
        if not isinstance(v, str | int | float | bool | type(None)):
            raise ConfigError(f"{override.get_key_element()}: a choice must be a str, int, float, bool or null")
    return CategoricalDistribution(values)


def _range(override: Override) -> BaseDistribution:
    r = override.value()
    if r.shuffle:
        return _choices(override)
    n = len(list(override.sweep_iterator()))
    if n == 0:
        raise ConfigError(f"{override.get_key_element()}: {override.get_value_element_as_str()} is empty")
    if any(isinstance(v, float) for v in (r.start, r.stop, r.step)):
        return FloatDistribution(float(r.start), float(r.start + (n - 1) * r.step), step=float(r.step))
    return IntDistribution(int(r.start), int(r.start + (n - 1) * r.step), step=int(r.step))


def distribution(override: Override) -> BaseDistribution | str:
    """The distribution a sweep override states, or its value as text when it is fixed."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep():
        return _choices(override)
    if override.is_range_sweep():
        return _range(override)
    if override.is_interval_sweep():
        v = override.value()  # Hydra's intervals are float ones
        return FloatDistribution(float(v.start), float(v.end), log="log" in v.tags)
    raise ConfigError(f"{override.input_line} is not a sweep the Optuna sweeper can sample")


def parse_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str | None]]:
    """({key: distribution} of the swept keys, {key: value} of the fixed ones; a deletion `~key` is {~key: None})."""
    dists: dict[str, BaseDistribution] = {}
    fixed: dict[str, str | None] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_delete():
            fixed[override.input_line] = None
            continue
        value = distribution(override)
        if isinstance(value, BaseDistribution):
            dists[override.get_key_element()] = value
        else:
            fixed[override.get_key_element()] = value
    return dists, fixed


def grid_values(name: str, dist: BaseDistribution) -> list:
    """Every value of a discrete distribution, for the grid sampler."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution | FloatDistribution) and dist.step is not None and not dist.log:
        n = round((dist.high - dist.low) / dist.step) + 1
        return [dist.low + i * dist.step for i in range(n)]
    raise ConfigError(f"the grid sampler needs discrete values for {name}: a list or a range, not an interval")


def suggest(trial: Any, name: str, dist: BaseDistribution) -> Any:
    """Draw `name` from `dist` for the trial, through Optuna's public suggest API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    suggest_number = trial.suggest_int if isinstance(dist, IntDistribution) else trial.suggest_float
    return suggest_number(name, dist.low, dist.high, step=dist.step, log=dist.log)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for an ask-and-tell loop. Its `after_trial` calls `study.stop()` once the grid is
    drawn, which raises outside `study.optimize` (a traceback that ended the sweep); this loop stops by itself at
    n_trials, capped at the grid's size."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        """Nothing: the loop knows when the grid is done."""


def search_space(params: dict, arguments: list[str], sampler: Any, n_trials: int) -> tuple[dict, dict, Any, int]:
    """(swept distributions, fixed values, the sampler, n_trials) of a sweep: a grid sampler is built here from the
    values of the swept keys, and n_trials is capped at the grid's size."""
    dists, fixed = parse_space([f"{k!s}={v}" for k, v in params.items()] + list(arguments))
    dists = {k: v for k, v in dists.items() if k not in fixed}
    if isinstance(sampler, functools.partial) and sampler.func == optuna.samplers.GridSampler:
        grid = {name: grid_values(name, d) for name, d in dists.items()}
        sampler, n_trials = GridSampler(grid, **sampler.keywords), min(n_trials, math.prod(map(len, grid.values())))
    return dists, fixed, sampler, n_trials


def configure(trial: Any, dists: dict, fixed: dict, extend: Callable | None) -> tuple[str, ...]:
    """Draw the trial's values (`extend(trial)` suggests dependent ones); its overrides, sampled then fixed."""
    for name, dist in dists.items():
        suggest(trial, name, dist)
    for name, value in fixed.items():
        trial.set_user_attr(name, value)
    if extend is not None:  # hydra.sweeper.custom_search_space
        extend(trial)
    if overlap := trial.params.keys() & fixed.keys():
        raise ValueError(f"Overlapping fixed parameters and search space parameters: {sorted(overlap)}")
    values = {**trial.params, **fixed}
    return tuple(name if v is None else f"{name}={v}" for name, v in values.items())
