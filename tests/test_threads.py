"""The thread share a stage reads from the pipeline (`instructrl.threads`)."""

import torch

from instructrl.threads import THREADS_FILE_ENV, ThreadShare, read_share, write_share


def test_a_changed_share_sets_the_thread_count_once(tmp_path, monkeypatch):
    current = {"threads": 1}
    monkeypatch.setattr(torch, "get_num_threads", lambda: current["threads"])
    monkeypatch.setattr(torch, "set_num_threads", lambda n: current.update(threads=n))
    path = tmp_path / "ppo"
    callback = ThreadShare(path)
    assert callback.apply() is None  # nothing written yet
    write_share(path, 2)
    assert read_share(path) == 2 and not (tmp_path / "ppo.partial").exists()
    assert callback.apply() == 2 and current["threads"] == 2
    assert callback.apply() is None  # already applied
    for bad in ("", "two", "0", "-1"):
        path.write_text(bad)
        assert read_share(path) is None and callback.apply() is None
    assert current["threads"] == 2


def test_without_the_pipeline_nothing_changes(monkeypatch):
    monkeypatch.delenv(THREADS_FILE_ENV, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (_ for _ in ()).throw(AssertionError("set")))
    assert ThreadShare().path is None and ThreadShare().apply() is None
