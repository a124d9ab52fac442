"""Review in ``cryopick app``: per-micrograph counts and status filters, accepting reviewed picks as annotations,
and those annotations feeding a second round of training (end to end through the API and the job workers)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import starfile

pytest.importorskip("starlette", reason="the app needs the 'app' extra (starlette, uvicorn)")
from starlette.testclient import TestClient  # noqa: E402

from cryopick.app import create_app  # noqa: E402
from cryopick.app.review import visible  # noqa: E402

TINY = {"epochs": 2, "steps_per_epoch": 8, "max_minutes": 1, "patch_size": 64, "batch_size": 4}


def run(c, kind, params):
    r = c.post("/api/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 200, r.text
    deadline = time.time() + 180
    while (status := c.get("/api/jobs/current").json())["state"] == "running" and time.time() < deadline:
        time.sleep(0.3)
    assert status["state"] == "done", status
    return status


def test_reviewed_picks_feed_a_second_round_of_training(project):
    root, truth = project
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        c.put("/api/micrographs/mic_0/annotations", json={"version": "0", "coords": truth["mic_0"].tolist()})
        c.put("/api/micrographs/mic_0/flag", json={"flag": "complete"})
        first = run(c, "train", TINY)
        assert first["result"]["micrographs"] == ["mic_0"] and first["result"]["particles"] == 12
        run(c, "pick", {})
        r = c.get("/api/micrographs").json()
        rows = {m["name"]: m for m in r["micrographs"]}
        assert rows["mic_1"]["picked"] is not None and rows["mic_1"]["accepted"] is None
        assert r["counts"]["picked"] == 3 and r["counts"]["reviewed"] == 0 and r["counts"]["annotated"] == 1
        assert [m["name"] for m in c.get("/api/micrographs?status=unreviewed").json()["micrographs"]] == \
            ["mic_0", "mic_1", "mic_2"]
        assert c.get("/api/micrographs?status=bogus").status_code == 400

        picks = c.get("/api/micrographs/mic_1/picks").json()
        threshold = 0.05
        expected = visible(picks["coords"], picks["scores"], [], threshold, 0.5, 5.0)
        assert expected, "the tiny model found nothing to review"
        # bad settings and a stale version are refused; nothing is written
        for body in ({"version": "0", "threshold": "x"}, {"version": "0", "threshold": 2},
                     {"version": "0", "threshold": 0.5, "min_distance": -1}, {"version": 0, "threshold": 0.5}):
            assert c.post("/api/micrographs/mic_1/accept", json=body).status_code == 400
        assert c.post("/api/micrographs/mic_1/accept", json={"version": "stale", "threshold": 0.5}).status_code == 409
        # a page that shows other picks than the server keeps at these settings: refused, nothing written
        r = c.post("/api/micrographs/mic_1/accept", json={"version": "0", "threshold": threshold, "min_distance": 0.5,
                                                          "shown": expected[1:]})
        assert r.status_code == 409 and f"the page shows {len(expected) - 1} picks of mic_1" in r.json()["error"]
        assert not (root / "annotations" / "mic_1_manualpick.star").exists()
        r = c.post("/api/micrographs/mic_1/accept", json={"version": "0", "threshold": threshold, "min_distance": 0.5,
                                                          "shown": expected[::-1]})  # in any order
        assert r.status_code == 200, r.text
        accepted = r.json()
        assert accepted["accepted"] == accepted["kept"] == len(expected) == len(accepted["coords"])
        star = starfile.read(root / "annotations" / "mic_1_manualpick.star")  # plain RELION, as RELION reads it
        assert np.allclose(np.sort(star[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), axis=0),
                           np.sort(np.asarray(expected, float), axis=0), atol=0.01)
        # accepting again adds nothing twice
        again = c.post("/api/micrographs/mic_1/accept", json={"version": accepted["version"], "threshold": threshold,
                                                               "min_distance": 0.5}).json()
        assert again["accepted"] == 0 and len(again["coords"]) == len(expected)
        rows = {m["name"]: m for m in c.get("/api/micrographs").json()["micrographs"]}
        assert rows["mic_1"]["accepted"] == rows["mic_1"]["annotated"] == len(expected)
        assert [m["name"] for m in c.get("/api/micrographs?status=reviewed").json()["micrographs"]] == ["mic_1"]

        second = run(c, "train", TINY)  # the second round trains on the reviewed picks too
        assert second["result"]["micrographs"] == ["mic_0", "mic_1"]
        assert second["result"]["particles"] == 12 + len(expected)
        assert second["result"]["accepted"] == len(expected)
        assert second["card"]["score_threshold"] is not None
