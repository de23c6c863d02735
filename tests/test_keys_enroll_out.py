"""server/keys.py: ``keys enroll --out FILE`` never leaves a node enrolled whose
secret key was not written, and its errors name FILE."""

from __future__ import annotations

import tomllib

import pytest

from server import keys as K


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    K.init_server(d)
    return d


def _enroll(keydir, out) -> int:
    return K.main(["enroll", "n1", "--server", "tcp://h:5555", "--dir", str(keydir), "--out", str(out)])


def test_an_existing_out_file_enrolls_nothing_and_a_retry_works(keydir, tmp_path, capsys):
    taken = tmp_path / "n1.toml"
    taken.write_text("mine\n")
    assert _enroll(keydir, taken) == 1
    err = capsys.readouterr().err
    assert str(taken) in err and ".tmp-" not in err and "not enrolled" in err
    assert taken.read_text() == "mine\n"                 # not replaced
    assert K.list_nodes(keydir) == []                     # and nothing enrolled
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    fresh = tmp_path / "n1-new.toml"
    assert _enroll(keydir, fresh) == 0                    # the retry is not "already enrolled"
    cfg = tomllib.loads(fresh.read_text())
    (node,) = K.list_nodes(keydir)
    assert node.node_id == "n1" and node.public_key == cfg["security"]["public_key"]


def test_an_out_file_in_a_missing_directory_enrolls_nothing(keydir, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "n1.toml"
    assert _enroll(keydir, out) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "does not exist" in err
    assert K.list_nodes(keydir) == []
    assert _enroll(keydir, tmp_path / "n1.toml") == 0


def test_an_out_directory_is_refused(keydir, tmp_path, capsys):
    assert _enroll(keydir, tmp_path) == 1
    assert str(tmp_path) in capsys.readouterr().err
    assert K.list_nodes(keydir) == []


def test_if_the_allow_list_cannot_be_written_the_out_file_is_removed(keydir, tmp_path, monkeypatch, capsys):
    real = K._write_file

    def refuse_allow_list(path, *args, **kw):
        if path.parent.name == K.NODES_DIR:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(K, "_write_file", refuse_allow_list)
    out = tmp_path / "n1.toml"
    assert _enroll(keydir, out) == 1
    assert "No space left" in capsys.readouterr().err
    assert not out.exists() and K.list_nodes(keydir) == []
