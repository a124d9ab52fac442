"""Weights download cache against a local HTTP server (never the internet): checksum verification,
resume with HTTP Range after an interruption, atomic rename, clear errors."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cryopick.cli.main import main as cli_main
from cryopick.errors import CryopickError
from cryopick.models import download as W
from cryopick.models.sam2.checkpoint import verify_sam2_checkpoint

DATA = bytes((i * 7919 + i // 251) % 256 for i in range(50_000))
SHA = hashlib.sha256(DATA).hexdigest()


class _Server:
    """Serves ``payload`` at any path; can cut the first ``drop_first`` responses after ``drop_after`` bytes."""

    def __init__(self, payload: bytes = DATA, honor_range: bool = True, drop_after: int | None = None,
                 drop_first: int = 1, status: int = 200):
        self.payload, self.honor_range, self.status = payload, honor_range, status
        self.drop_after, self.drop_left = drop_after, (drop_first if drop_after is not None else 0)
        self.ranges: list[str | None] = []
        self.bytes_sent = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                if server.status != 200:
                    self.send_error(server.status)
                    return
                start = 0
                if rng and server.honor_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(server.payload):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(server.payload)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                else:
                    self.send_response(200)
                body = server.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_left:
                    server.drop_left -= 1
                    body = body[: server.drop_after]
                self.wfile.write(body)
                self.wfile.flush()
                server.bytes_sent += len(body)
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.pt"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _get(url, dest, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("retry_wait", 0.0)
    kw.setdefault("timeout", 10.0)
    return W.download_url(url, dest, **kw)


def test_download_verifies_checksum_and_renames_atomically(tmp_path):
    dest = tmp_path / "w" / "model.pt"
    with _Server() as srv:
        path = _get(srv.url, dest, sha256=SHA.upper(), size=len(DATA))
    assert path == dest and dest.read_bytes() == DATA
    assert not dest.with_name("model.pt.part").exists()
    assert dest.with_name("model.pt.sha256").read_text().split()[0] == SHA
    assert srv.ranges == [None]


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path):
    dest = tmp_path / "model.pt"
    with _Server() as srv, pytest.raises(CryopickError, match=f"checksum mismatch.*expected SHA-256 {'0' * 64}, got {SHA}"):
        _get(srv.url, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "model.pt.part").exists()


def test_size_mismatch_is_rejected(tmp_path):
    with _Server() as srv, pytest.raises(CryopickError, match="has 50000 bytes, expected 123"):
        _get(srv.url, tmp_path / "m.pt", size=123)


def test_interrupted_download_keeps_part_and_resumes_with_range(tmp_path):
    dest = tmp_path / "model.pt"
    part = tmp_path / "model.pt.part"
    with _Server(drop_after=12_345) as srv:
        with pytest.raises(CryopickError, match="interrupted after 12345 bytes.*rerun the same command to resume"):
            _get(srv.url, dest, sha256=SHA, retries=0)
        # atomic: nothing under the final name, the partial data is kept
        assert not dest.exists() and part.stat().st_size == 12_345
        path = _get(srv.url, dest, sha256=SHA)
    assert path.read_bytes() == DATA
    assert srv.ranges == [None, "bytes=12345-"]
    assert srv.bytes_sent == len(DATA)  # the resumed request sent only the missing bytes
    assert not part.exists()


def test_resume_within_one_call(tmp_path):
    with _Server(drop_after=1000, drop_first=2) as srv:
        path = _get(srv.url, tmp_path / "m.pt", sha256=SHA, retries=3)
    assert path.read_bytes() == DATA
    assert srv.ranges == [None, "bytes=1000-", "bytes=2000-"]


def test_server_without_range_support_restarts_cleanly(tmp_path):
    (tmp_path / "m.pt.part").write_bytes(b"stale bytes from somewhere else" * 10)
    with _Server(honor_range=False) as srv:
        path = _get(srv.url, tmp_path / "m.pt", sha256=SHA)
    assert path.read_bytes() == DATA
    assert srv.ranges == ["bytes=310-"]


def test_complete_part_file_is_finished_without_refetching(tmp_path):
    (tmp_path / "m.pt.part").write_bytes(DATA)
    with _Server() as srv:
        path = _get(srv.url, tmp_path / "m.pt", sha256=SHA)
    assert path.read_bytes() == DATA and srv.bytes_sent == 0  # server answered 416


def test_existing_file_is_skipped(tmp_path):
    dest = tmp_path / "m.pt"
    dest.write_bytes(DATA)
    with _Server() as srv:
        assert _get(srv.url, dest, sha256=SHA) == dest
    assert srv.ranges == []


def test_http_error_is_reported(tmp_path):
    with _Server(status=404) as srv, pytest.raises(CryopickError, match="HTTP 404"):
        _get(srv.url, tmp_path / "m.pt")


def test_sam2_verification_accepts_real_layout_and_rejects_other_files(tmp_path):
    from cryopick.models.registry import build_model

    good = tmp_path / "src.pt"
    model = build_model("sam2-test-tiny")
    torch.save({"model": model.sam2_state_dict()}, good)
    with _Server(payload=good.read_bytes()) as srv:
        path = _get(srv.url, tmp_path / "ok.pt", verify=verify_sam2_checkpoint("sam2-test-tiny"))
    assert path.is_file()
    with _Server() as srv, pytest.raises(CryopickError, match="failed verification.*not a readable PyTorch"):
        _get(srv.url, tmp_path / "bad.pt", verify=verify_sam2_checkpoint("sam2-test-tiny"))
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.pt.part").exists()


def test_official_table_and_cli(tmp_path, monkeypatch, capsys):
    assert len(W.OFFICIAL_WEIGHTS) == 8
    entry = W.get_entry("sam2.1-hiera-large")
    assert entry.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt"
    assert W.get_entry("sam2_hiera_base_plus.pt").name == "sam2-hiera-base-plus"
    monkeypatch.setenv("CRYOPICK_CACHE", str(tmp_path))
    assert W.cache_dir() == tmp_path / "weights"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sam2_hiera_tiny.pt").write_bytes(DATA)
    (tmp_path / "weights" / "sam2_hiera_tiny.pt.sha256").write_text(f"{SHA}  sam2_hiera_tiny.pt\n")
    (tmp_path / "weights" / "sam2.1_hiera_small.pt.part").write_bytes(DATA[:10])
    assert cli_main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {SHA}" in out and "partial" in out and "not downloaded" in out
    assert cli_main(["weights", "path", "sam2-hiera-tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "weights" / "sam2_hiera_tiny.pt")
    assert cli_main(["weights", "path", "sam2-hiera-large"]) == 2
    assert "cryopick weights download sam2-hiera-large" in capsys.readouterr().err
    assert cli_main(["weights", "download", "no-such-model"]) == 2


def test_checkpoint_by_name_uses_the_cache(tmp_path, monkeypatch):
    from cryopick.models.registry import build_model
    from cryopick.models.sam2 import resolve_checkpoint

    monkeypatch.setenv("CRYOPICK_CACHE", str(tmp_path))
    with pytest.raises(CryopickError, match="not downloaded.*cryopick weights download sam2.1-hiera-tiny"):
        build_model("sam2.1-hiera-tiny", checkpoint="sam2.1-hiera-tiny", image_size=64)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    assert resolve_checkpoint("sam2.1-hiera-tiny") == str(tmp_path / "weights" / "sam2.1_hiera_tiny.pt")
    assert resolve_checkpoint("some/file.pt") == "some/file.pt"
