"""``cryopick app`` command line: one library call, loopback by default, the token when exposed."""

from __future__ import annotations

import socket

import pytest

import cryopick.app as app_module

pytest.importorskip("uvicorn", reason="the app needs the 'app' extra (starlette, uvicorn)")
from cryopick.cli.main import main


@pytest.fixture
def captured(monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    return seen


def test_loopback_by_default_without_token(tmp_path, captured, capsys):
    assert main(["app", str(tmp_path / "new_project"), "--port", "0", "--no-browser"]) == 0
    assert (tmp_path / "new_project").is_dir()  # a new folder becomes a project
    assert captured["host"] == "127.0.0.1" and captured["app"].token is None
    assert captured["app"].allowed_hosts is not None  # Host header checked (DNS rebinding)
    err = capsys.readouterr().err
    assert f"http://localhost:{captured['port']}/" in err


def test_other_host_requires_the_printed_token(tmp_path, captured, capsys):
    assert main(["app", str(tmp_path), "--host", "0.0.0.0", "--port", "0", "--no-browser"]) == 0
    token = captured["app"].token
    assert token and len(token) >= 24
    assert f"?token={token}" in capsys.readouterr().err


def test_bad_port_and_file_are_one_line_errors(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert main(["app", str(tmp_path), "--port", str(busy), "--no-browser"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("cryopick app: error: --port") and err.count("\n") == 1
    assert main(["app", str(tmp_path), "--port", "70000", "--no-browser"]) != 0
    assert "Traceback" not in capsys.readouterr().err
    (tmp_path / "f.txt").write_text("x")
    assert main(["app", str(tmp_path / "f.txt"), "--port", "0", "--no-browser"]) != 0
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", str(tmp_path), "--port", "-1"])
    assert app_module.url_for("::1", 8, None) == "http://localhost:8/"
