"""``fedfm exp``: without NAME it lists the experiments; an unknown NAME is an error (2)."""

import re

from fedfm.cli import main


def test_exp_without_name_lists_experiments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but never into the repo
    assert main(["exp"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^adapters: ", out, re.M) and re.search(r"^init: ", out, re.M)
    assert "E3: adapters cut the cost" in out  # each name with its title
    assert list(tmp_path.iterdir()) == []


def test_exp_unknown_name_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["exp", "nope"]) == 2
    out = capsys.readouterr().out
    assert "unknown experiment" in out and "nope" in out
    assert list(tmp_path.iterdir()) == []
