"""The results store (sweep.py export), the tables read from it, and docs/results.md regenerated from it."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from denetdm.errors import DataError
from denetdm.reporting import store
from denetdm.reporting.docgen import BLOCK, regenerate, report
from denetdm.reporting.runs import collect
from denetdm.reporting.tables import Table, add_published, build_table
from sweep import main as sweep_main

from conftest import ROOT, compose_cfg

SEEDS = ROOT / "tests" / "fixtures" / "sweeps" / "seeds"


def _export(tmp_path: Path, capsys) -> Path:
    to = tmp_path / "store"
    sweep_main(["export", str(SEEDS), "--to", str(to)])
    assert "exported 4 runs" in capsys.readouterr().out
    return to


def _error(args: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        sweep_main(args)
    return str(e.value)


def test_export_writes_one_record_per_run_and_tables_read_the_store_as_the_runs(tmp_path, capsys):
    to = _export(tmp_path, capsys)
    records = sorted(to.glob(f"*{store.SUFFIX}"))
    assert len(records) == 4
    rec = json.loads(records[0].read_text())
    assert rec["format"] == store.FORMAT and "trial" not in rec["config"] and rec["source"].startswith("seeds/")
    assert len(rec["curves"]["stage1/shallow/val/acc_conflicting"]) == rec["config"]["experts"]["epochs"]
    # the same cells from the store as from the run directories
    assert build_table(collect([to])).cells == build_table(collect([SEEDS])).cells
    sweep_main(["export", str(SEEDS), "--to", str(to)])  # again: the same records, nothing new
    assert "0 new or changed, 4 already there" in capsys.readouterr().out
    # the curves come back as per-epoch records
    run = next(r for r in collect([to]).runs if r.results["seed"] == 0)
    plain = next(r for r in collect([SEEDS]).runs if r.fingerprint == run.fingerprint)
    key = "stage1/shallow/val/acc_conflicting"
    assert [e[key] for e in run.epochs() if key in e] == [round(e[key], 4) for e in plain.epochs() if key in e]


def test_probe_curves_are_kept_at_their_epochs_only():
    # probes run every `probe.every` epochs: their curves hold null elsewhere and read back only where measured
    probe, acc = "stage1/shallow/probe/b", "stage1/shallow/test/acc_conflicting"
    epochs = [{"stage": "stage1", "epoch": e, acc: e / 10, "stage1/time/epoch_s": 1.0} for e in (2, 1, 3)]
    epochs[0][probe] = 0.8  # epoch 2
    kept = store.curves(epochs)
    assert kept == {acc: [0.1, 0.2, 0.3], probe: [None, 0.8, None]}
    back = store.epochs_of({"curves": kept})
    assert [e.get(probe) for e in back] == [None, 0.8, None] and [probe in e for e in back] == [False, True, False]
    assert [e[acc] for e in back] == [0.1, 0.2, 0.3]


def test_export_bad_input_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert _error(["export", str(SEEDS), "--to", str(afile)]).startswith(f"error: --to {afile} is a file")
    unfinished = tmp_path / "run"
    shutil.copytree(SEEDS / "0", unfinished)
    (unfinished / "results.json").unlink()
    (unfinished / ".hydra").mkdir(exist_ok=True)
    msg = _error(["export", str(unfinished), "--to", str(tmp_path / "s")])
    assert msg.startswith("error:") and "has no results.json" in msg and "\n" not in msg
    to = _export(tmp_path, capsys)
    record = next(to.glob(f"*{store.SUFFIX}"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "format": 99}))
    msg = _error(["table", str(to)])
    assert msg.startswith("error:") and "store format 99" in msg and "\n" not in msg


def test_a_doc_block_is_regenerated_from_the_store(tmp_path, capsys, monkeypatch):
    to = _export(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "doc.md"
    where = "--where seed=1 --where dataset.conflict_pct=1"
    runs = f"<!-- runs: store --keys seed,test/acc_unbiased,test/acc-val/acc {where} -->\n<!-- end -->\n"
    doc.write_text("Intro.\n<!-- table: store --published -->\nstale\n<!-- end -->\n" + runs + "Outro.\n")
    assert report(doc, check=True) is False
    assert report(doc) is False and report(doc, check=True) is True
    text = doc.read_text()
    assert text.startswith("Intro.\n<!-- table: store --published -->\n| method |") and text.endswith("Outro.\n")
    assert "stale" not in text and "(n=2)" in text
    (run,) = [r for r in collect([to]).runs if r.results["seed"] == 1 and r.config["dataset"]["conflict_pct"] == 1]
    value = run.results["test/acc_unbiased"]
    diff = run.results["test/acc"] - run.results["val/acc"]
    assert f"| 1 | {100 * value:.2f} | {100 * diff:.2f} |" in text and "- 1 runs" in text
    # a changed record changes the doc: the check fails until it is regenerated
    run.path.write_text(json.dumps({**run.results, "test/acc_unbiased": 0.5}))
    assert report(doc, check=True) is False and "| 1 | 50.00 |" in regenerate(text)


def test_a_doc_without_blocks_or_with_an_unclosed_one_is_one_line(tmp_path):
    doc = tmp_path / "doc.md"
    for text, words in [
        ("Just prose.\n", "no generated blocks"),
        ("<!-- table: store -->\n| a |\n", "no `<!-- end -->`"),
    ]:
        doc.write_text(text)
        with pytest.raises(DataError, match=words):
            report(doc, check=True)
    doc.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="cannot be read as text"):
        report(doc, check=True)


def test_table_and_curves_blocks_read_only_the_runs_where_says(tmp_path, capsys, monkeypatch):
    to = _export(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    key = "stage1/shallow/test/acc_conflicting"
    text = regenerate(
        "<!-- table: store --where dataset.conflict_pct=5 -->\n<!-- end -->\n"
        f"<!-- curves: store --where dataset.conflict_pct=1 --keys {key} --every 2 -->\n<!-- end -->\n"
    )
    assert "sev4 5% |" in text and "sev4 1%" not in text.split("<!-- curves")[0] and "(n=2)" in text
    runs = [r for r in collect([to]).runs if r.config["dataset"]["conflict_pct"] == 1]
    runs.sort(key=lambda r: r.results["seed"])
    curves = [[e[key] for e in r.epochs() if key in e] for r in runs]
    assert "| epoch | seed 0 | seed 1 |" in text and f"- 2 runs; cells: {key}" in text
    for epoch in (1, 2, 3):  # 1, every 2nd, and the last of 3
        assert f"| {epoch} | {100 * curves[0][epoch - 1]:.2f} | {100 * curves[1][epoch - 1]:.2f} |" in text
    labelled = regenerate(
        f"<!-- curves: store --where seed=0 --keys {key} --label dataset.conflict_pct,seed -->\n<!-- end -->\n"
    )
    assert "| epoch | conflict_pct 1, seed 0 | conflict_pct 5, seed 0 |" in labelled and f"cells: {key}" in labelled
    assert sweep_main(["table", str(to), "--where", "seed=1"]) is None and "(n=1)" in capsys.readouterr().out
    sweep_main(["table", str(to), "--where", "seed=1", "--where", "seed=0", "--where", "dataset.conflict_pct=5"])
    assert "(n=2)" in capsys.readouterr().out  # a key given twice: either value; other keys: and
    assert _error(["table", str(to), "--where", "seed"]).startswith("error: --where takes KEY=VALUE")
    with pytest.raises(DataError, match="--every must be"):
        regenerate(f"<!-- curves: store --keys {key} --every 0 -->\n<!-- end -->\n")


def test_docs_results_md_is_what_the_committed_store_gives(monkeypatch):
    monkeypatch.chdir(ROOT)
    path = Path("docs/results.md")
    assert report(path, check=True), "docs/results.md is stale: run `python sweep.py report` and commit it"


def _by_run(name: str) -> dict:
    records = [store.read(f) for f in (ROOT / "results" / name).glob(f"*{store.SUFFIX}")]
    return {(r["method"], r["config"]["dataset"]["conflict_pct"], r["seed"], r["selection"]): r for r in records}


def test_the_committed_protocol_runs_repeat_the_table_runs_they_share_a_training_with():
    # selection picks epochs and changes no step: a protocol run of the store follows its seed's `val` run of Table 1
    # epoch for epoch in each phase, up to the first phase whose chosen epoch differs (stage 2 learns from the stage-1
    # model chosen), and the oracle's final model is the best of its last curve (a record made on other CPU kernels
    # would follow no `val` run)
    val, protocols = _by_run("cmnist_table1"), _by_run("cmnist_protocols")
    assert {k[3] for k in protocols} == {"oracle", "val_nolabels"}
    for (method, pct, seed, selection), r in protocols.items():
        twin = val[(method, pct, seed, "val")]
        for phase in r["stages"]:
            shared = [k for k in r["curves"] if k.startswith(f"{phase}/") and k in twin["curves"]]
            assert shared and all(r["curves"][k] == twin["curves"][k] for k in shared), (method, pct, seed, phase)
            if r[f"{phase}/selected_epoch"] != twin[f"{phase}/selected_epoch"]:
                break
        if selection == "oracle":
            curve = r["curves"][f"{r['stages'][-1]}/target/test/acc_unbiased"]
            assert r["test/acc_unbiased"] == pytest.approx(max(curve), abs=5e-5)


TWO_DECIMALS = re.compile(r"(?<![\d.])-?\d+\.\d\d(?![\d])")


def _numbers(text: str) -> set[str]:
    return set(TWO_DECIMALS.findall(text))


def _floats(tree) -> list[float]:
    if isinstance(tree, dict):
        return [v for x in tree.values() for v in _floats(x)]
    if isinstance(tree, list):
        return [v for x in tree for v in _floats(x)]
    return [tree] if isinstance(tree, float) else []


def _stored_numbers() -> set[str]:
    """Every number of the records and of the files the store names beside them (the reference loops' JSON lines),
    as fractions and as percentages to two decimals (either way of rounding a half); the published numbers."""
    out = set()
    for path in (ROOT / "results").rglob("*.json*"):
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for v in (v for line in lines for v in _floats(json.loads(line))):
            out |= {f"{v:.2f}", f"{100 * v:.2f}", f"{round(100 * v + 1e-9, 2):.2f}"}
    return out | _numbers((ROOT / "denetdm" / "reporting" / "published.yaml").read_text())


def test_every_number_the_prose_of_results_md_gives_to_two_decimals_is_on_the_page_or_in_the_store():
    text = (ROOT / "docs" / "results.md").read_text()
    blocks = "".join(m.group(0) for m in BLOCK.finditer(text))
    prose = BLOCK.sub("", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    derived = set().union(*(_numbers(m) for m in re.findall(r"<!-- derived: (.*?) -->", prose, flags=re.S)))
    prose = re.sub(r"<!-- derived: .*? -->", "", prose, flags=re.S)
    missing = _numbers(prose) - _numbers(blocks) - _stored_numbers() - derived
    assert not missing, f"prose numbers of docs/results.md in no table, record, file or derived note: {missing}"


def test_every_published_row_names_its_source():
    published = yaml.safe_load((ROOT / "denetdm" / "reporting" / "published.yaml").read_text())
    rows = {row.split(" (")[0] for metrics in published["results"].values() for r in metrics.values() for row in r}
    assert rows and rows <= set(published["row_sources"]), rows - set(published["row_sources"])
    assert "not DFA's own paper's numbers" in published["row_sources"]["DFA"]


@pytest.mark.parametrize("dataset", ["cmnist", "ccifar10", "bffhq", "bar", "celeba"])
def test_the_papers_numbers_go_only_beside_rows_at_its_architectures(dataset):
    at = yaml.safe_load((ROOT / "denetdm" / "reporting" / "published.yaml").read_text())["measured_at"][dataset]
    preset = f"experiment=paper_{dataset}" if dataset in ("cmnist", "ccifar10", "bffhq") else f"dataset={dataset}"
    for method, row in (("denetdm", "DeNetDM"), ("erm", "others"), ("lff", "others")):
        config = compose_cfg([preset, f"method={method}"])
        depths = [config.model[part].depth for part in config.method.row_depths]
        assert depths == at[row], (method, depths)
    if dataset != "cmnist":
        return
    table = Table("test/acc_unbiased", ["val"], names={"DeNetDM": "denetdm"})
    table.rows = [("DeNetDM", (3, 5)), ("DeNetDM", (6, 8))]
    table.cols = [("val", "cmnist", "4", 1.0, "")]
    add_published(table)
    assert table.published == {(table.rows[0], table.cols[0]): "85.22 ± 0.76"}  # not beside (6, 8)


def test_the_depth_pairs_preset_is_the_papers_grid_and_gets_its_numbers_beside():
    preset = yaml.safe_load((ROOT / "conf" / "hparams_search" / "depth_pairs.yaml").read_text())
    grid = {tuple(json.loads(f"[{p}]")) for p in preset["hydra"]["sweeper"]["params"]["depth_pair"][1:-1].split("],[")}
    published = yaml.safe_load((ROOT / "denetdm" / "reporting" / "published.yaml").read_text())["results"]["cmnist"]
    rows = published["stage1/shallow/test/acc_conflicting"]
    assert grid == {tuple(int(d) for d in row.split("(")[1].rstrip(")").split(", ")) for row in rows}
    assert preset["hydra"]["sweeper"]["params"]["seed"] == "0,1,2"
    table = Table(
        "stage1/shallow/test/acc_conflicting",
        ["val"],
        rows=[("DeNetDM stage 1", (3, 4))],
        cols=[("val", "cmnist", "4", 1.0, "")],
        names={"DeNetDM stage 1": "denetdm_stage1"},
    )
    add_published(table)
    assert table.published == {(table.rows[0], table.cols[0]): "72.20"}


@pytest.mark.slow
def test_the_python_api_loads_a_run_and_its_model_and_a_sweep_as_rows(tmp_path):
    import denetdm
    from denetdm.errors import DataError
    from denetdm.training.pipeline import train

    from conftest import TINY, compose_cfg

    results = train(compose_cfg([*TINY, "experts.epochs=1", "target.epochs=1"]), tmp_path / "run")
    proc = subprocess.run(  # from another folder: the package imports from anywhere after make install
        [sys.executable, str(ROOT / "docs" / "example_load_run.py"), str(tmp_path / "run"), "fig.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers = re.findall(r"\d+\.\d\d", proc.stdout)
    assert len(numbers) == 4 and numbers[:2] == numbers[2:], proc.stdout  # the reloaded model: the recorded numbers
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    run = denetdm.load_run(tmp_path / "run")
    assert run.results["test/acc_unbiased"] == results["test/acc_unbiased"] and run.epochs
    shown = repr(run)  # a line, not the whole results dict
    assert len(shown) < 300 and "DeNetDM (3, 5) on synthetic, seed 0" in shown
    assert f"val/acc_unbiased {100 * results['objective']:.2f} %" in shown
    assert set(run.model("stage1").predict(run.data().test.x[:4])) == {"shallow", "deep", "poe"}
    rows = denetdm.load_sweep(SEEDS)
    assert len(rows) == 4 and {"method", "seed", "params", "objective", "test/acc_unbiased"} <= set(rows[0])
    with pytest.raises(DataError, match="not a finished run"):
        denetdm.load_run(tmp_path)


@pytest.mark.slow
def test_a_method_whose_phase_names_do_not_sort_in_run_order_keeps_its_fingerprint(tmp_path, capsys):
    # JTT runs jtt_id, then jtt: results.json and the record keep that order, so neither drops jtt_id as a
    # "later" phase (found in the store: JTT records had lost their identification phase)
    from denetdm.training.pipeline import finished, plan, train

    from conftest import TINY, compose_cfg

    cfg = compose_cfg([*TINY, "method=jtt", "method.id_epochs=1"])
    train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(results["config"]["method"]["phases"]) == ["jtt_id", "jtt"]
    assert finished(plan(cfg, tmp_path / "run")) is not None  # a rerun trains nothing
    sweep_main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "store")])
    (record,) = (tmp_path / "store").glob("*.record.json")
    assert list(json.loads(record.read_text())["config"]["method"]["phases"]) == ["jtt_id", "jtt"]
