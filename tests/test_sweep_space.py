"""The Optuna sweeper's search-space grammar (hydra-optuna-sweeper's) on today's Optuna distributions."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from denetdm.errors import ConfigError
from denetdm.sweeps.space import grid_values, parse_space, suggest


def test_each_sweep_kind_becomes_its_distribution_and_plain_values_stay_fixed():
    dists, fixed = parse_space(
        [
            "a=range(1,4)",
            "b=tag(log, interval(1e-4, 1e-2))",
            "c=x,y",
            "d=interval(2, 8)",
            "e=range(0,1,0.25)",
            "f=5",
            "~g",
        ]
    )
    assert dists["a"] == IntDistribution(1, 3, step=1)  # Hydra's range ends before its stop
    assert dists["b"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["c"] == CategoricalDistribution(["x", "y"])
    assert dists["d"] == FloatDistribution(2.0, 8.0)  # Hydra's intervals are float ones
    assert dists["e"] == FloatDistribution(0.0, 0.75, step=0.25)
    assert fixed == {"f": "5", "~g": None}


def test_grid_values_are_the_ranges_values_and_an_interval_is_one_clear_error():
    dists, _ = parse_space(["a=range(1,7,2)", "e=range(0,1,0.25)", "c=x,y", "i=interval(0.1, 0.5)"])
    assert grid_values("a", dists["a"]) == [1, 3, 5]
    assert grid_values("e", dists["e"]) == [0.0, 0.25, 0.5, 0.75]
    assert grid_values("c", dists["c"]) == ["x", "y"]
    with pytest.raises(ConfigError, match="the grid sampler needs discrete values for i"):
        grid_values("i", dists["i"])


def test_sampled_values_stay_inside_the_range_for_tpe():
    dists, _ = parse_space(["a=range(1,4)", "b=tag(log, interval(1e-4, 1e-2))"])
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    for _ in range(15):
        trial = study.ask()
        values = {name: suggest(trial, name, d) for name, d in dists.items()}
        study.tell(trial, values["a"] + values["b"])
    assert {t.params["a"] for t in study.trials} <= {1, 2, 3}
    assert all(1e-4 <= t.params["b"] <= 1e-2 for t in study.trials)


def test_a_storage_that_is_not_a_url_is_one_error_line():
    from denetdm.sweeps.sweeper import _checked_settings

    with pytest.raises(SystemExit, match="hydra.sweeper.storage must be an Optuna URL, journal"):
        _checked_settings({"storage": 123, "max_failure_rate": 0.5, "n_trials": 2})


@pytest.mark.parametrize(
    "url,words",
    [
        ("journal:/nonexistent/dir/study.journal", "the folder /nonexistent/dir does not exist or is not writable"),
        (
            "mysql+mysqldb://me:secret@host/db",
            "needs the database driver 'MySQLdb', which is not installed: pip install mysqlclient",
        ),
        ("bogus://x", "is not a storage URL"),
        ("no url at all", "is not a storage URL"),
    ],
)
def test_a_storage_this_machine_cannot_open_is_one_line_before_the_sweep(url, words):
    from denetdm.sweeps.pruning import check_storage

    with pytest.raises(ConfigError) as info:
        check_storage(url)
    assert words in str(info.value) and "secret" not in str(info.value)
    check_storage("sqlite:///study.db")  # SQLite's driver comes with Python
