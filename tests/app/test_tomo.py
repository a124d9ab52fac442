"""Tomograms in ``cryopick app``: slices, prompts per class and pick3d, over the API and in chromium."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette", reason="the app needs the 'app' extra (starlette, uvicorn)")
from starlette.testclient import TestClient  # noqa: E402

from cryopick.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def tomo_project(tmp_path_factory):
    from cryopick.io.images import write_mrc
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    root = tmp_path_factory.mktemp("tomo") / "proj"
    classes = random_particle_classes(3, seed=424242, voxel_size=10.0, diameter_range_A=(150.0, 250.0))
    t = simulate_tomogram(classes, shape=(64, 96, 96), voxel_size=10.0, seed=0, n_particles=24, snr=3.0,
                          membranes=0, gold_beads=0, name="ts0")
    write_mrc(root / "tomograms" / "ts0.mrc", t.volume, pixel_size=10.0)
    table = t.picks.table
    first = table[table["label"] == classes[0].name][["x", "y", "z"]].to_numpy()[0]
    return root, [round(float(v), 1) for v in first]


def post(c, url, body):
    return c.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})


def test_slices_prompts_and_bad_input(tomo_project, tmp_path):
    import shutil

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        (root / "tomograms" / "broken.mrc").write_bytes(b"\x00" * 100)  # listed with its reason
        rows = c.get("/api/tomograms").json()["tomograms"]
        assert rows[1] == {"name": "ts0", "shape": [64, 96, 96], "voxel_size": 10.0, "picked": {}, "reviewed": {}}
        assert rows[0]["name"] == "broken" and "broken.mrc" in rows[0]["error"]
        assert c.get("/api/tomograms/broken/slice").status_code == 400
        for axis in "xyz":
            r = c.get(f"/api/tomograms/ts0/slice?axis={axis}&index=20&slab=2")
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        for q in ("axis=w", "index=64", "index=-1", "index=a", "slab=99"):
            r = c.get(f"/api/tomograms/ts0/slice?{q}")
            assert r.status_code == 400 and "error" in r.json(), q
        for path in ("/api/tomograms/..%2Fproj/slice", "/api/tomograms/%2E%2E/picks", "/api/tomograms/nope/picks"):
            assert 400 <= c.get(path).status_code < 500
        r = post(c, "/api/tomograms/ts0/prompts", {"label": "ribo", "xyz": [40, 50, 30]})
        assert r.status_code == 200 and r.json()["prompts"]["ribo"] == {"tomogram": "ts0", "positions": [[40, 50, 30]]}
        for bad in ({"label": "../x", "xyz": [1, 2, 3]}, {"label": "ribo", "xyz": [1, 2]},
                    {"label": "ribo", "xyz": ["a", 2, 3]}, {"label": "ribo", "xyz": [1, 2, 300]},
                    {"label": 5, "xyz": [1, 2, 3]}, {"label": "ribo", "xyz": [1, 2, 3], "remove": "yes"}):
            assert post(c, "/api/tomograms/ts0/prompts", bad).status_code == 400, bad
        r = post(c, "/api/tomograms/ts0/prompts", {"label": "ribo", "xyz": [41, 50, 30], "remove": True})
        assert r.json()["prompts"] == {}
        assert json.loads((root / "prompts" / "prompts.json").read_text()) == {}
        for bad in ({"label": "x", "xyz": [1, 2]}, {"label": "../x", "xyz": [1, 2, 3]}, {"xyz": [1, 2, 3]},
                    {"label": "x", "xyz": [1, 2, 3], "undo": 1}):
            assert post(c, "/api/tomograms/ts0/reject", bad).status_code == 400, bad
        r = post(c, "/api/tomograms/ts0/reject", {"label": "x", "xyz": [1, 2, 3]})
        assert r.status_code == 200 and r.json()["rejected"] == [[1, 2, 3]]
        for bad in ({"threshold": 2}, {"threshold": "0.5"}, {}):  # {}: nothing picked yet
            assert post(c, "/api/tomograms-export", bad).status_code == 400, bad


def test_prompt_pick3d_and_review_in_the_browser(tomo_project, tmp_path):
    import shutil

    from .test_browser import CHROMIUM, Server, sync_api  # skipped like the browser tests when chromium is missing

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)
    x, y, z = tomo_project[1]
    s = Server(root)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
            page.goto(s.url + "tomograms")
            page.wait_for_function("window.cryotomo && window.cryotomo.img")
            page.locator("#index").fill(str(int(round(z))))
            page.wait_for_timeout(300)
            page.fill("#label", "target")
            pos = page.evaluate("([x, y, z]) => { const r = document.getElementById('canvas').getBoundingClientRect();"
                                " const [sx, sy] = project([x, y, z]); return [r.left + sx, r.top + sy]; }", [x, y, z])
            page.mouse.click(*pos)
            sync_api.expect(page.locator("#prompts")).to_contain_text("target: 1 example(s) in ts0")
            page.click("#pick3d")
            sync_api.expect(page.locator("#job-state")).to_contain_text("pick3d: done", timeout=90000)
            sync_api.expect(page.locator("#pick-count")).to_contain_text("target picks", timeout=10000)
            n = int(page.text_content("#pick-count").split()[0])
            assert n > 0
            # reject one pick on its own slice; the reviewed export leaves it out
            px, py, pz = page.evaluate("window.cryotomo.picks.target.coords[0]")
            page.locator("#index").fill(str(int(round(pz))))
            page.wait_for_timeout(300)
            pos = page.evaluate("([x, y, z]) => { const r = document.getElementById('canvas').getBoundingClientRect();"
                                " const [sx, sy] = project([x, y, z]); return [r.left + sx, r.top + sy]; }", [px, py, pz])
            page.mouse.click(*pos, button="right")
            sync_api.expect(page.locator("#pick-count")).to_contain_text(f"{n - 1} target picks", timeout=10000)
            page.click("#export")
            sync_api.expect(page.locator("#export-result")).to_contain_text(f"wrote {n - 1} picks", timeout=10000)
            page.click("#accept3d")  # per class: the kept picks become yes answers, the rejected one a no
            sync_api.expect(page.locator("#state")).to_contain_text(f"accepted {n - 1} target picks", timeout=10000)
            sync_api.expect(page.locator("#tomo-list li[data-name=ts0]")).to_contain_text(
                f"target: {n} picked, {n - 1} accepted, 1 rejected", timeout=10000)
            page.locator("#threshold").fill("1")
            assert page.text_content("#pick-count").startswith("0 target picks")
            drawn = page.evaluate("window.cryotomo.picks.target.coords.length")
            assert drawn == n
            import os
            if os.environ.get("CRYOPICK_APP_SCREENSHOTS"):
                page.locator("#threshold").fill("0")
                page.screenshot(path=os.path.join(os.environ["CRYOPICK_APP_SCREENSHOTS"], "app_tomogram.png"))
            browser.close()
    finally:
        s.stop()
    for sub in ("relion5/target/ts0_autopick.star", "relion4/target/ts0.star", "relion5/tomograms.star"):
        assert (root / "picks3d" / sub).is_file(), sub
    assert list((root / "picks3d" / "copick").rglob("*.json"))
    assert (root / "prompts" / "target.prompt").is_file()
    from cryopick.io.coords import read_picks

    exported = root / "export" / "tomograms" / "relion5"
    back = read_picks(exported / "target" / "ts0_autopick.star", tomograms_star=exported / "tomograms.star")
    assert len(back) == n - 1 and (exported / "target" / "autopick.star").is_file()
    assert list((root / "export" / "tomograms" / "copick").rglob("*.json"))


def test_reviewed_picks_become_answers_for_a_second_pick3d(tomo_project, tmp_path):
    import shutil
    import time

    from cryopick.app.review3d import split
    from cryopick.picker3d.answers import Answers

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)

    def pick3d(c, params):
        assert post(c, "/api/jobs", {"kind": "pick3d", "params": params}).status_code == 200
        deadline = time.time() + 180
        while (status := c.get("/api/jobs/current").json())["state"] == "running" and time.time() < deadline:
            time.sleep(0.3)
        return status

    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        assert post(c, "/api/tomograms/ts0/accept", {"label": "target", "threshold": 0.5}).status_code == 400  # no picks
        assert post(c, "/api/jobs", {"kind": "pick", "params": {"answers": True}}).status_code == 400
        assert post(c, "/api/tomograms/ts0/prompts", {"label": "target", "xyz": tomo_project[1]}).status_code == 200
        r = post(c, "/api/jobs", {"kind": "pick3d", "params": {"answers": True}})  # nothing reviewed yet
        assert r.status_code == 400 and "accept the picks of a class first" in r.json()["error"]
        assert pick3d(c, {})["state"] == "done"
        data = c.get("/api/tomograms/ts0/picks").json()["picks"]["target"]
        assert len(data["coords"]) >= 3
        scores = sorted(s for s in data["scores"] if s is not None)
        threshold = scores[len(scores) // 3]
        post(c, "/api/tomograms/ts0/reject", {"label": "target", "xyz": data["coords"][0]})
        data = c.get("/api/tomograms/ts0/picks").json()["picks"]["target"]
        kept, rejected, below = split(data, threshold)
        assert len(rejected) == 1 and kept
        for bad in ({"label": "target", "threshold": 2}, {"label": "../x", "threshold": 0.5}, {"threshold": 0.5},
                    {"label": "target", "threshold": "0.5"}, {"label": "nope", "threshold": 0.5}):
            assert 400 <= post(c, "/api/tomograms/ts0/accept", bad).status_code < 500, bad
        for _ in range(2):  # accepting again replaces the class's rows instead of adding them twice
            r = post(c, "/api/tomograms/ts0/accept", {"label": "target", "threshold": threshold})
            assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(kept) and r.json()["rejected"] == 1
        answers = Answers.read(root / "answers3d" / "answers.csv")  # the ask3d format pick3d --answers reads
        assert sorted(answers.table["answer"]) == sorted(["yes"] * len(kept) + ["no"])
        assert set(answers.table["tomogram"]) == {"ts0"} and set(answers.table["label"]) == {"target"}
        row = c.get("/api/tomograms").json()["tomograms"][0]
        assert row["picked"]["target"] == len(data["coords"])
        assert row["reviewed"]["target"] == {"accepted": len(kept), "rejected": 1, "threshold": round(threshold, 4)}
        # per-class thresholds in the export
        r = post(c, "/api/tomograms-export", {"threshold": 0.0, "thresholds": {"target": threshold}})
        assert r.status_code == 200 and r.json()["n"] == len(kept)
        assert post(c, "/api/tomograms-export", {"thresholds": {"target": 3}}).status_code == 400
        second = pick3d(c, {"answers": True})  # the second round: the prompt adapted to the reviewed picks
        assert second["state"] == "done", second
        assert second["result"]["adapted"] == ["target"]
        assert (root / "picks3d" / "adapted" / "target.adapted.npz").is_file()


def test_the_pages_diameter_reaches_the_prompt(tomo_project, tmp_path, monkeypatch):
    """The page's diameter field is kept with the class and made into its prompt (issue 14: a typed
    diameter did not change the result; the prompt always estimated it)."""
    import shutil

    from cryopick.app import jobs
    from cryopick.picker3d import batch
    from cryopick.picker3d.prompt import load_prompt

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        for bad in (0, -3, "21", True):
            r = post(c, "/api/tomograms/ts0/prompts", {"label": "ribo", "xyz": tomo_project[1], "diameter": bad})
            assert r.status_code == 400 and "diameter" in r.json()["error"], bad
        r = post(c, "/api/tomograms/ts0/prompts", {"label": "ribo", "xyz": tomo_project[1], "diameter": 21.7})
        assert r.status_code == 200 and r.json()["prompts"]["ribo"]["diameter"] == 21.7
    monkeypatch.setattr(batch, "pick_tomograms", lambda *a, **k: {"picks": {}})  # the prompt is what counts here
    jobs._pick3d(str(root), root / "job", {})
    prompt = load_prompt(root / "prompts" / "ribo.prompt")
    assert abs(prompt.diameter - 21.7) < 1e-6 and not prompt.meta.get("diameter_estimated")
