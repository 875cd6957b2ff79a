"""`make bench` runs (a smoke test: it measures and prints, and never fails on a timing)."""

import bench
import pytest


@pytest.mark.slow
def test_cifar_comparison_runs_and_prints(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DENETDM_DATA", str(tmp_path))  # no cifar10-jpeg.zip: random CIFAR-sized images
    bench.bench_cifar(str(tmp_path / "cache"), "cpu", steps=2, batch_size=16)
    out = capsys.readouterr().out
    assert "batched tensors (ours)" in out and "per-image PIL + DataLoader" in out and "speed-up: stage 1" in out


@pytest.mark.slow
def test_stacked_rows_time_both_ways_of_stepping(tmp_path):
    from denetdm.data.synthetic import SyntheticShapes

    data = (
        SyntheticShapes(
            name="synthetic",
            train_size=600,
            test_size=100,
            severity=4,
            conflict_pct=1,
            val_size=100,
            seed=0,
            cache_dir=str(tmp_path),
        )
        .load()
        .to("cpu")
    )
    config = bench._method_config("denetdm")
    for vectorize in (False, True):
        s1, s2 = bench._stacked_step_s(data, config, 2, vectorize, "cpu", steps=2)
        assert s1 > 0 and s2 > 0


@pytest.mark.slow
def test_the_images_csv_bench_prints_both_loads(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [sys.executable, str(ROOT / "tests" / "bench_images_csv.py"), "--images", "300", "--size", "32"]
    out = subprocess.run([*cmd, "--tree", str(tmp_path / "tree")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "first load (decode, cache)" in out.stdout and "cached load" in out.stdout and "peak resident" in out.stdout
