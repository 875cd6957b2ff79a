"""`make bench` runs (a smoke test: it measures and prints, and never fails on a timing)."""

from denetdm import bench


def test_cifar_comparison_runs_and_prints(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DENETDM_DATA", str(tmp_path))  # no cifar10-jpeg.zip: random CIFAR-sized images
    bench.bench_cifar(str(tmp_path / "cache"), "cpu", steps=2, batch_size=16)
    out = capsys.readouterr().out
    assert "batched tensors (ours)" in out and "per-image PIL + DataLoader" in out and "speed-up: stage 1" in out
