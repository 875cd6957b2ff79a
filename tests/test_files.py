"""The file writers on their own: durable atomic writes with the umask's permissions, appends cut back on failure."""

import os
import stat
import subprocess
import sys

import pytest

from denetdm.files.atomic import atomic_save, atomic_write
from denetdm.files.jsonlines import JsonLines

from conftest import ROOT


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.slow
def test_written_files_follow_the_umask_so_colleagues_can_read_them(tmp_path):
    script = (
        "import os, sys; os.umask(int(sys.argv[2], 8)); from pathlib import Path; p = Path(sys.argv[1]);"
        "from denetdm.files.atomic import atomic_write, atomic_save; from denetdm.files.jsonlines import JsonLines;"
        'exec(\'with atomic_write(p / "a.json") as f: f.write("{}")\');'
        "atomic_save({'x': 1}, p / 'b.pt'); JsonLines(p / 'c.jsonl').append({'epoch': 1})"
    )
    for umask, want in (("022", 0o644), ("077", 0o600), ("002", 0o664)):
        folder = tmp_path / umask
        folder.mkdir()
        subprocess.run([sys.executable, "-c", script, str(folder), umask], cwd=ROOT, check=True)
        assert {p.name: _mode(p) for p in folder.iterdir()} == {"a.json": want, "b.pt": want, "c.jsonl": want}


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("the writer failed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    with pytest.raises(AttributeError):
        atomic_save(lambda: None, path)  # torch cannot pickle it: nothing is written at all
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_append_that_fails_is_cut_back_to_the_last_whole_record(tmp_path, monkeypatch):
    records = JsonLines(tmp_path / "metrics.jsonl")
    records.append({"epoch": 1})
    real_write = os.write

    def short_then_full(fd, data):  # the disk takes a few bytes, then is full
        monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space left")))
        return real_write(fd, data[:5])

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError, match="No space"):
        records.append({"epoch": 2})
    monkeypatch.setattr(os, "write", real_write)
    assert records.path.read_text() == '{"epoch": 1}\n' and records.read() == [{"epoch": 1}]


def test_a_folder_lock_stops_a_second_holder_and_warns_where_flock_is_missing(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from denetdm.errors import BusyError
    from denetdm.files.lock import folder_lock

    with folder_lock(tmp_path, "sweep", "hydra.sweep.dir"):  # flock is per open file: a second open conflicts
        with pytest.raises(BusyError, match=f"in use by process {os.getpid()} .sweep.; .*another hydra.sweep.dir"):
            with folder_lock(tmp_path, "sweep", "hydra.sweep.dir"):
                pass
    monkeypatch.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOLCK, "No locks available")))
    with folder_lock(tmp_path, "run"):  # a file system without flock: one warning, and on
        pass
    assert "cannot lock files" in caplog.text and "nothing stops a second run" in caplog.text


def test_binary_garbage_in_place_of_metrics_keeps_every_record_and_is_named_once(tmp_path, caplog):
    garbage = bytes(range(256)) * 3  # not UTF-8, no newline at its end
    records = JsonLines(tmp_path / "metrics.jsonl")
    records.path.write_bytes(garbage)
    records.append({"stage": "stage1", "epoch": 1})
    assert records.read() == [{"stage": "stage1", "epoch": 1}]  # the first epoch's record is not glued to it
    assert caplog.text.count("damaged") == 1 and "line 1" in caplog.text
    records.truncate("stage1", 0)  # a fresh start of stage 1: its records go, the garbage stays as it was
    assert records.path.read_bytes().startswith(garbage) and records.read() == []
    torn = records.path.read_bytes() + b'{"stage": "stage1", "ep'  # a record cut by a crash: left out silently
    records.path.write_bytes(torn)
    records.append({"stage": "stage1", "epoch": 1})
    assert records.read() == [{"stage": "stage1", "epoch": 1}]


def test_the_cache_says_its_size_and_lists_and_clears_only_its_own_files(tmp_path, capsys, caplog):
    import logging

    import torch

    from denetdm.data.cache import cached, main

    caplog.set_level(logging.INFO, logger="denetdm.data.cache")
    cached(tmp_path, "toy", {"n": 1}, lambda: {"x": torch.zeros(1000)})
    assert "the cache holds" in caplog.text and "python -m denetdm.data.cache" in caplog.text
    (tmp_path / "notes.txt").write_text("mine")
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "toy-" in out and "1 cache files" in out
    main([str(tmp_path), "--clear"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and "deleted" in capsys.readouterr().out
