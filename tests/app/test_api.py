"""API of ``cryopick app`` under hostile input: every refusal is a 4xx JSON message, nothing escapes the project."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import starfile

pytest.importorskip("starlette", reason="the app needs the 'app' extra (starlette, uvicorn)")
from starlette.testclient import TestClient  # noqa: E402

from cryopick.app import create_app
from cryopick.io.images import write_mrc


@pytest.fixture
def client(project):
    root, truth = project
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        yield c, root, truth


def put(c, url, body, **kw):
    return c.put(url, content=json.dumps(body), headers={"Content-Type": "application/json"}, **kw)


def assert_json_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert isinstance(r.json()["error"], str) and "Traceback" not in r.text


def test_annotations_roundtrip_are_relion_star_and_versioned(client):
    c, root, truth = client
    a = c.get("/api/micrographs/mic_0/annotations").json()
    assert a == {"name": "mic_0", "version": "0", "coords": []}
    r = put(c, "/api/micrographs/mic_0/annotations", {"version": "0", "coords": [[10.5, 20.0], [100, 200]]})
    assert r.status_code == 200
    v1 = r.json()["version"]
    table = starfile.read(root / "annotations" / "mic_0_manualpick.star")  # readable without cryopick
    assert table["rlnCoordinateX"].tolist() == [10.5, 100.0] and table["rlnCoordinateY"].tolist() == [20.0, 200.0]
    # a second writer still holding version "0" gets a conflict with the current state; nothing is written
    before = (root / "annotations" / "mic_0_manualpick.star").read_bytes()
    r = put(c, "/api/micrographs/mic_0/annotations", {"version": "0", "coords": [[1, 1]]})
    assert r.status_code == 409
    assert r.json()["current"]["version"] == v1 and len(r.json()["current"]["coords"]) == 2
    assert (root / "annotations" / "mic_0_manualpick.star").read_bytes() == before
    # an edit based on the current version goes through
    r = put(c, "/api/micrographs/mic_0/annotations", {"version": v1, "coords": [[1, 1]]})
    assert r.status_code == 200 and r.json()["coords"] == [[1.0, 1.0]]
    rows = c.get("/api/micrographs").json()["micrographs"]
    assert [(m["name"], m["annotated"]) for m in rows] == [("mic_0", 1), ("mic_1", 0), ("mic_2", 0)]
    assert not list((root / "annotations").glob(".*tmp*"))  # atomic writes leave no temporary files


def test_flags_settings_image_and_export(client):
    c, root, truth = client
    assert put(c, "/api/micrographs/mic_1/flag", {"flag": "empty"}).json()["flags"] == {"mic_1": "empty"}
    assert json.loads((root / "annotations" / "flags.json").read_text()) == {"mic_1": "empty"}
    assert_json_error(put(c, "/api/micrographs/mic_1/flag", {"flag": "bogus"}), 400)
    assert put(c, "/api/settings", {"diameter": 24}).json() == {"diameter": 24.0}
    for bad in (0, -5, "24", None, 1e9, True):
        assert_json_error(put(c, "/api/settings", {"diameter": bad}), 400)
    r = c.get("/api/micrographs/mic_0/image")
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((root / ".cryopick-app" / "cache").glob("*.png"))
    assert_json_error(c.post("/api/export", json={"format": "relion"}), 400)  # nothing annotated yet
    put(c, "/api/micrographs/mic_0/annotations", {"version": "0", "coords": truth["mic_0"].tolist()})
    r = c.post("/api/export", json={"format": "relion"})
    assert r.status_code == 200, r.text
    table = starfile.read(root / "export" / "annotations-relion" / "mic_0_autopick.star")
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), truth["mic_0"], atol=1e-3)
    assert_json_error(c.post("/api/export", json={"format": "../../x"}), 400)
    assert_json_error(c.post("/api/export", json={"format": "relion", "source": "/etc"}), 400)


def test_relion_export_index_paths_are_relative_to_the_project(project, tmp_path, monkeypatch):
    """Issue 27 item 3: the server started in the project's parent folder; the exported autopick.star must
    name micrographs and coordinate files both relative to the project (as a RELION project reads them)."""
    root, truth = project
    elsewhere = root.parent  # a folder above the project: relative paths from it would start with "proj/"
    monkeypatch.chdir(elsewhere)
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        for name in ("mic_0", "mic_2"):
            r = put(c, f"/api/micrographs/{name}/annotations", {"version": "0", "coords": truth[name].tolist()})
            assert r.status_code == 200, r.text
        r = c.post("/api/export", json={"format": "relion"})
        assert r.status_code == 200, r.text
    monkeypatch.chdir(root)  # as RELION would: from the project folder
    index = starfile.read(Path("export") / "annotations-relion" / "autopick.star")
    assert sorted(index["rlnMicrographName"]) == ["micrographs/mic_0.mrc", "micrographs/mic_2.mrc"]
    for mic, coord in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
        assert not Path(coord).is_absolute() and Path(mic).is_file(), (mic, coord)
        table = starfile.read(coord)
        name = Path(mic).stem
        np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), truth[name], atol=1e-3)


@pytest.mark.parametrize("path", [
    "/api/micrographs/..%2F..%2Fetc%2Fpasswd/annotations",
    "/api/micrographs/%2E%2E/annotations",
    "/api/micrographs/..",
    "/api/micrographs/%2Fetc%2Fpasswd",
    "/api/micrographs/%2Fetc%2Fpasswd/image",
    "/api/micrographs/.cryopick-app/annotations",
    "/api/micrographs/mic_0%00/annotations",
    "/api/micrographs/..%5C..%5Cwindows/annotations",
    "/api/micrographs/no_such/annotations",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/server.py",
    "/static/../app/server.py",
])
def test_path_traversal_is_refused(client, path):
    c, root, truth = client
    r = c.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert "root:" not in r.text and "import" not in r.text
    r = put(c, path if path.startswith("/api") and path.endswith("annotations") else "/api/micrographs/%2E%2E/annotations",
            {"version": "0", "coords": [[1, 1]]})
    assert 400 <= r.status_code < 500


def test_symlinks_out_of_the_project_are_not_followed(client, tmp_path):
    c, root, truth = client
    outside = tmp_path / "outside"
    outside.mkdir()
    write_mrc(outside / "secret.mrc", np.zeros((32, 32), np.float32))
    os.symlink(outside / "secret.mrc", root / "micrographs" / "evil.mrc")
    assert "evil" not in [m["name"] for m in c.get("/api/micrographs").json()["micrographs"]]
    assert_json_error(c.get("/api/micrographs/evil/image"), 404)
    # an annotations folder that is a link out of the project is refused, and nothing is written there
    os.symlink(outside, root / "annotations")
    assert_json_error(put(c, "/api/micrographs/mic_0/annotations", {"version": "0", "coords": [[1, 1]]}), 403)
    assert_json_error(put(c, "/api/micrographs/mic_0/flag", {"flag": "empty"}), 403)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.mrc"]


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"text"', b'{"version": "0", "coords": [[NaN, 1]]}',
    b'{"version": "0", "coords": [[1e999, 1]]}', b'{"version": "0", "coords": [["1", 2]]}',
    b'{"version": "0", "coords": [[true, 2]]}', b'{"version": "0", "coords": [[1, 2, 3]]}',
    b'{"version": "0", "coords": [[1]]}', b'{"version": "0", "coords": "1,2"}', b'{"version": "0", "coords": [null]}',
    b'{"version": "0", "coords": [{"x": 1, "y": 2}]}', b'{"version": 0, "coords": []}', b'{"coords": []}',
    b"\xff\xfe", b"",
])
def test_malformed_bodies_are_400(client, body):
    c, root, truth = client
    r = c.put("/api/micrographs/mic_0/annotations", content=body, headers={"Content-Type": "application/json"})
    assert_json_error(r, 400)
    assert not (root / "annotations" / "mic_0_manualpick.star").exists()


def test_sizes_are_bounded(client):
    c, root, truth = client
    big = b'{"version": "0", "coords": [' + b"[1, 1], " * 200000 + b"[1, 1]]}"
    assert_json_error(c.put("/api/micrographs/mic_0/annotations", content=big,
                            headers={"Content-Type": "application/json"}), 413)
    many = {"version": "0", "coords": [[1, 1]] * 20001}
    assert_json_error(put(c, "/api/micrographs/mic_0/annotations", many), 400)
    assert_json_error(c.put("/api/micrographs/mic_0/annotations", content=b'{"version": "0", "coords": []}',
                            headers={"Content-Type": "text/plain"}), 415)  # no cross-site simple POSTs
    assert_json_error(c.delete("/api/micrographs/mic_0/annotations", headers={"Content-Type": "application/json"}),
                      405)
    assert_json_error(c.get("/api/nothing"), 404)
    assert_json_error(c.get("/api/micrographs/mic_0/image?kind=../../x"), 400)
    assert c.get("/api/micrographs/mic_0/region?x0=0&y0=0&x1=64&y1=32").content[:4] == b"\x89PNG"
    for q in ("x0=0&y0=0&x1=999&y1=32", "x0=a&y0=0&x1=1&y1=1", "x0=0", "x0=5&y0=0&x1=5&y1=10"):
        assert_json_error(c.get(f"/api/micrographs/mic_0/region?{q}"), 400)
    assert c.get("/api/micrographs/mic_0/tile?level=0&x=0&y=0").content[:4] == b"\x89PNG"
    for q in ("level=0&x=1&y=0", "level=5&x=0&y=0", "level=-1&x=0&y=0", "level=a&x=0&y=0", "level=0", "x=0&y=0",
              "level=0&x=0&y=1e9", "level=99999999999999999999&x=0&y=0"):
        assert_json_error(c.get(f"/api/micrographs/mic_0/tile?{q}"), 400)
    assert_json_error(c.get("/api/micrographs/..%2Fmic_0/tile?level=0&x=0&y=0"), 404)


def test_token_and_host_are_checked_when_exposed(project):
    root, truth = project
    app = create_app(root, token="s3cret-token", allowed_hosts={"localhost", "testserver"})
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_json_error(c.get("/api/project"), 403)
        assert_json_error(c.get("/api/project?token=wrong"), 403)
        assert_json_error(c.get("/api/project", headers={"Authorization": "token wrong"}), 403)
        assert_json_error(c.get("/", headers={"Cookie": "cryopick_token=nope"}), 403)
        assert_json_error(c.get("/static/app.js"), 403)
        assert c.get("/api/project", headers={"Authorization": "token s3cret-token"}).status_code == 200
        r = c.get("/?token=s3cret-token")  # the printed URL: sets a cookie for the page's own requests
        assert r.status_code == 200 and "cryopick_token" in r.headers["set-cookie"]
        assert "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/api/micrographs").status_code == 200  # the cookie now
        assert_json_error(c.get("/api/project", headers={"Host": "evil.example:8765"}), 403)


def test_jobs_one_at_a_time_cancel_and_bad_params(client):
    c, root, truth = client
    assert_json_error(c.post("/api/jobs", json={"kind": "rm -rf /"}), 400)
    assert_json_error(c.post("/api/jobs", json={"kind": "train", "params": {"epochs": "1; ls"}}), 400)
    assert_json_error(c.post("/api/jobs", json={"kind": "train", "params": {"epochs": 0}}), 400)
    assert_json_error(c.post("/api/jobs", json={"kind": "train", "params": {"max_minutes": -1}}), 400)
    assert_json_error(c.post("/api/jobs", json={"kind": "pick", "params": {"names": ["../x"]}}), 400)
    assert_json_error(c.post("/api/jobs/cancel", json={}), 404)
    put(c, "/api/micrographs/mic_0/annotations", {"version": "0", "coords": truth["mic_0"].tolist()})
    r = c.post("/api/jobs", json={"kind": "train", "params": {"epochs": 1, "steps_per_epoch": 1}})
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert_json_error(c.post("/api/jobs", json={"kind": "pick"}), 409)
    with TestClient(create_app(root), raise_server_exceptions=False) as second:  # another server, same project
        assert_json_error(second.post("/api/jobs", json={"kind": "pick"}), 409)
    r = c.post("/api/jobs/cancel", json={})
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    events = c.get("/api/jobs/stream").text  # the stream of a finished job: one event, then it closes
    assert events.startswith("data: ") and json.loads(events[6:].strip())["state"] == "cancelled"
    # a pick job without a model fails with a one-line message, not a traceback
    r = c.post("/api/jobs", json={"kind": "pick"})
    assert r.status_code == 200
    deadline = time.time() + 60
    while c.get("/api/jobs/current").json()["state"] == "running" and time.time() < deadline:
        time.sleep(0.3)
    status = c.get("/api/jobs/current").json()
    assert status["state"] == "failed" and "train one first" in status["message"]


def test_rejected_picks_are_kept_out_of_the_export(client):
    from cryopick.io.coords import write_picks
    from cryopick.picks import Picks

    c, root, truth = client
    (root / "model").mkdir()
    (root / "model" / "card.json").write_text('{"score_threshold": 0.5}')
    write_picks(Picks.from_arrays("mic_2", truth["mic_2"][:3], score=[0.9, 0.8, 0.3]), root / "picks", format="relion")
    data = c.get("/api/micrographs/mic_2/picks").json()
    assert data["threshold"] == 0.5 and data["rejected"] == [] and len(data["coords"]) == 3
    first = truth["mic_2"][0].tolist()
    r = c.post("/api/micrographs/mic_2/reject", json={"xy": first})
    assert r.status_code == 200 and len(r.json()["rejected"]) == 1
    assert c.post("/api/micrographs/mic_2/reject", json={"xy": first}).json()["rejected"] == r.json()["rejected"]
    r = c.post("/api/export", json={"format": "relion", "source": "picks", "threshold": 0.5})
    table = starfile.read(root / "export" / "picks-relion" / "mic_2_autopick.star")
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), truth["mic_2"][1:2], atol=1e-3)
    assert c.post("/api/micrographs/mic_2/reject", json={"xy": first, "undo": True}).json()["rejected"] == []
    for bad in ({"xy": ["a", 1]}, {"xy": None}, {"xy": [1, 2], "undo": "yes"}):
        assert_json_error(c.post("/api/micrographs/mic_2/reject", json=bad), 400)
    assert_json_error(c.post("/api/micrographs/mic_2/reject", content=b'{"xy": [1e400, 1]}',
                             headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("content", [b"\x00\xff garbage" * 20, b"data_\nloop_\n_rlnCoordinateX #1\nabc\n", b""])
def test_a_damaged_annotation_file_is_named_and_does_not_hide_the_others(client, content):
    c, root, truth = client
    put(c, "/api/micrographs/mic_1/annotations", {"version": "0", "coords": [[5, 5]]})
    (root / "annotations" / "mic_0_manualpick.star").write_bytes(content)
    rows = {m["name"]: m for m in c.get("/api/micrographs").json()["micrographs"]}
    assert rows["mic_1"]["annotated"] == 1 and rows["mic_2"]["annotated"] == 0
    r = c.get("/api/micrographs/mic_0/annotations")
    if r.status_code != 200:  # an empty file reads as no particles; anything else is a clear 4xx
        assert_json_error(r, 400)
        assert "mic_0_manualpick.star" in r.json()["error"] and "mic_0_manualpick.star" in rows["mic_0"]["error"]
