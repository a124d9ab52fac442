"""Tomograms in ``cryopick app``: slices, prompts per class and pick3d, over the API and in chromium."""

from __future__ import annotations

import json

import numpy as np
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
    """Prompt, pick3d, reject, export and accept in chromium; the page's state (class, diameter, threshold,
    slab, slice) survives a reload, and an accept after the reload writes exactly the picks shown (issue 27
    item 6: a reload put the threshold back at 0 and "accept" rewrote 11 yes answers as 12)."""
    import math
    import shutil
    import time

    from cryopick.io.coords import read_picks
    from cryopick.picker3d.answers import Answers

    from .test_browser import CHROMIUM, Server, same_points, sync_api  # skipped without chromium, like them

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)
    x, y, z = tomo_project[1]
    s = Server(root)

    def at(page, xyz):
        return page.evaluate("([x, y, z]) => { const r = document.getElementById('canvas').getBoundingClientRect();"
                             " const [sx, sy] = project([x, y, z]); return [r.left + sx, r.top + sy]; }", list(xyz))

    def shown(page):
        return page.evaluate("visible('target')")

    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
            page.goto(s.url + "tomograms")
            page.wait_for_function("window.cryotomo && window.cryotomo.img")
            # the diameter in Å (10 Å/voxel here), voxels as the alternative; a fresh page's class is "particle"
            assert page.input_value("#diameter-unit") == "A" and page.input_value("#diameter") == "160"
            sync_api.expect(page.locator("#diameter-note")).to_have_text("= 16.0 vox at 10.00 Å/vox")
            assert page.input_value("#label") == "particle"
            page.locator("#index").fill(str(int(round(z))))
            page.fill("#label", "target")
            page.mouse.click(*at(page, (x, y, z)))
            sync_api.expect(page.locator("#prompts")).to_contain_text("target: 1 example(s) in ts0",
                                                                      timeout=60000)  # the first loads torch
            page.click("#pick3d")
            sync_api.expect(page.locator("#job-state")).to_contain_text("pick3d: done", timeout=90000)
            sync_api.expect(page.locator("#pick-count")).to_contain_text("target picks", timeout=10000)
            coords = page.evaluate("window.cryotomo.picks.target.coords")
            n = len(coords)
            assert n >= 3 and int(page.text_content("#pick-count").split()[0]) == n
            # reject one pick on its own slice: that very pick is the one the review and the export leave out
            gone = coords[1]
            page.locator("#index").fill(str(int(round(gone[2]))))
            page.mouse.click(*at(page, gone), button="right")
            sync_api.expect(page.locator("#pick-count")).to_contain_text(f"{n - 1} target picks", timeout=10000)
            assert sorted(map(tuple, shown(page))) == sorted(tuple(c) for c in coords if c != gone)
            page.click("#export")
            sync_api.expect(page.locator("#export-result")).to_contain_text(f"wrote {n - 1} picks", timeout=10000)
            exported = root / "export" / "tomograms" / "relion5"
            back = read_picks(exported / "target" / "ts0_autopick.star", tomograms_star=exported / "tomograms.star")
            assert same_points(back.coords, [c for c in coords if c != gone], tol=0.05)

            # the page's state: a threshold between the scores, a diameter in Å, a slab, a slice with picks
            p = page.evaluate("window.cryotomo.picks.target")
            scores = sorted(v for c, v in zip(p["coords"], p["scores"]) if c != gone)
            threshold = math.floor(scores[-1] * 100) / 100  # the best pick stays, the worst (if lower) goes
            page.locator("#threshold").fill(str(threshold))
            page.fill("#diameter", "180")
            page.press("#diameter", "Enter")
            sync_api.expect(page.locator("#diameter-note")).to_have_text("= 18.0 vox at 10.00 Å/vox")
            page.fill("#slab", "2")
            page.press("#slab", "Enter")
            page.locator("#index").fill("0")
            page.click("#next-picks")  # jump to the first slice holding a pick's centre (or the prompt's)
            index = int(page.input_value("#index"))
            centres = [c[2] for c in shown(page)] + [z]
            assert index == min(math.floor(v + 0.5) for v in centres), (index, centres)  # JS Math.round
            before, count = sorted(map(tuple, shown(page))), page.text_content("#pick-count")
            assert 0 < len(before) < n - 1 or scores[0] >= threshold, (len(before), n, scores)
            want = {"tomogram": "ts0", "index": index, "slab": 2, "label": "target", "diameter": 180.0, "unit": "A",
                    "thresholds": {"target": threshold}}
            deadline = time.time() + 20  # saved in the project a moment after the last change
            while time.time() < deadline:
                kept = json.loads((root / "app.json").read_text()).get("tomogram_page", {})
                if {k: kept.get(k) for k in want} == want:
                    break
                time.sleep(0.1)
            assert {k: kept.get(k) for k in want} == want, kept
            page.reload()
            page.wait_for_function("window.cryotomo && window.cryotomo.img && window.cryotomo.picks.target")
            assert page.input_value("#label") == "target"  # a click now adds to "target", not a new "particle"
            assert page.input_value("#diameter-unit") == "A" and page.input_value("#diameter") == "180"
            assert page.input_value("#slab") == "2" and int(page.input_value("#index")) == index
            assert float(page.input_value("#threshold")) == threshold
            assert page.text_content("#pick-count") == count and sorted(map(tuple, shown(page))) == before
            page.click("#accept3d")  # per class: the picks shown become yes answers, the rejected one a no
            sync_api.expect(page.locator("#state")).to_contain_text(f"accepted {len(before)} target picks",
                                                                    timeout=10000)
            sync_api.expect(page.locator("#tomo-list li[data-name=ts0]")).to_contain_text(
                f"target: {n} picked, {len(before)} accepted, 1 rejected", timeout=10000)
            table = Answers.read(root / "answers3d" / "answers.csv").table
            xyz = table[["x", "y", "z"]].to_numpy(float)
            assert same_points(xyz[table["answer"] == "yes"], before)
            assert same_points(xyz[table["answer"] == "no"], [gone])
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
    assert (exported / "target" / "autopick.star").is_file()
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
        kept, rejected, below = split(data, threshold, 16 / 4)  # the page's default diameter: 16 voxels
        assert rejected == [data["coords"][0]] and kept
        for bad in ({"label": "target", "threshold": 2}, {"label": "../x", "threshold": 0.5}, {"threshold": 0.5},
                    {"label": "target", "threshold": "0.5"}, {"label": "nope", "threshold": 0.5},
                    {"label": "target", "threshold": threshold},  # without the picks the page shows
                    {"label": "target", "threshold": threshold, "shown": [["a", 1, 2]]}):
            assert 400 <= post(c, "/api/tomograms/ts0/accept", bad).status_code < 500, bad
        # a page that shows other picks than the server would write (another threshold, a stale page): refused,
        # nothing written, and the message says both counts
        for shown in (kept[1:], data["coords"], kept + [[1.0, 2.0, 3.0]]):
            r = post(c, "/api/tomograms/ts0/accept", {"label": "target", "threshold": threshold, "shown": shown})
            assert r.status_code == 409 and f"the page shows {len(shown)} target picks" in r.json()["error"]
            assert f"the server would accept {len(kept)}" in r.json()["error"]
        assert not (root / "answers3d" / "answers.csv").exists()
        for _ in range(2):  # accepting again replaces the class's rows instead of adding them twice
            r = post(c, "/api/tomograms/ts0/accept", {"label": "target", "threshold": threshold,
                                                       "shown": list(reversed(kept))})
            assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(kept) and r.json()["rejected"] == 1
        answers = Answers.read(root / "answers3d" / "answers.csv")  # the ask3d format pick3d --answers reads
        table = answers.table
        assert sorted(table["answer"]) == sorted(["yes"] * len(kept) + ["no"])
        assert set(table["tomogram"]) == {"ts0"} and set(table["label"]) == {"target"}
        xyz = table[["x", "y", "z"]].to_numpy(float)  # the very picks: the kept ones yes, the rejected one no
        assert sorted(map(tuple, xyz[table["answer"] == "yes"].round(2))) == sorted(map(tuple, np.round(kept, 2)))
        assert xyz[table["answer"] == "no"].round(2).tolist() == np.round(rejected, 2).tolist()
        # the accepted threshold is the page's threshold of the class from now on
        assert c.get("/api/tomograms-page").json()["thresholds"] == {"target": threshold}
        row = c.get("/api/tomograms").json()["tomograms"][0]
        assert row["picked"]["target"] == len(data["coords"])
        assert row["reviewed"]["target"] == {"accepted": len(kept), "rejected": 1, "threshold": round(threshold, 4)}
        # per-class thresholds in the export
        r = post(c, "/api/tomograms-export", {"threshold": 0.0, "thresholds": {"target": threshold}})
        assert r.status_code == 200 and r.json()["n"] == len(kept)
        assert post(c, "/api/tomograms-export", {"thresholds": {"target": 3}}).status_code == 400
        second = pick3d(c, {"answers": True})  # the second round: the prompt adapted to the reviewed picks
        assert second["state"] == "done", second
        # the answers adapt the class only where, left out one at a time, they beat its settings
        # (issue 24); either way the job says which picker it used and why
        expected = second["result"]["expected"]
        assert expected.startswith("expected from the answers (leave-one-out): target: "), expected
        made = (root / "picks3d" / "adapted" / "target.adapted.npz").is_file()
        if second["result"]["adapted"] == ["target"]:
            assert made and "target: adapted, precision" in expected
        else:
            assert second["result"]["adapted"] == [] and not made and "target: settings, precision" in expected


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


def test_the_tomogram_pages_state_is_kept_in_the_project(tomo_project, tmp_path):
    """Issue 27 item 6: class, diameter, per-class thresholds, slab and slice survive a reload and a server
    restart (PROJECT/app.json), next to the micrograph page's diameter; bad fields are refused by name."""
    import shutil

    root = tmp_path / "p"
    shutil.copytree(tomo_project[0], root)
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        fresh = c.get("/api/tomograms").json()["page"]
        assert fresh == {"tomogram": None, "axis": "z", "index": None, "slab": 0, "label": None,
                         "review_class": None, "diameter": None, "unit": "A", "thresholds": {}}
        state = {"tomogram": "ts0", "axis": "y", "index": 40, "slab": 3, "label": "ribo", "review_class": "ribo",
                 "diameter": 180.0, "unit": "A", "thresholds": {"ribo": 0.42, "other": 0.1}}
        r = c.put("/api/tomograms-page", json=state)
        assert r.status_code == 200 and r.json() == state
        r = c.put("/api/tomograms-page", json={"thresholds": {"other": None, "third": 0.7}, "slab": 0})
        assert r.json()["thresholds"] == {"ribo": 0.42, "third": 0.7} and r.json()["slab"] == 0
        for bad, word in (({"slab": 99}, "slab"), ({"axis": "w"}, "axis"), ({"unit": "nm"}, "unit"),
                          ({"thresholds": {"ribo": 2}}, "thresholds['ribo']"), ({"label": "../x"}, "label"),
                          ({"diameter": -1}, "diameter"), ({"index": 1.5}, "index"), ({"zoom": 2}, "zoom"),
                          ({"tomogram": "../etc"}, "name"), ({"thresholds": [1]}, "thresholds")):
            r = c.put("/api/tomograms-page", json=bad)
            assert r.status_code == 400 and word in r.json()["error"], (bad, r.json())
        assert c.put("/api/settings", json={"diameter": 30}).status_code == 200  # the 2D settings keep it
    data = json.loads((root / "app.json").read_text())
    assert data["diameter"] == 30 and data["tomogram_page"]["thresholds"] == {"ribo": 0.42, "third": 0.7}
    with TestClient(create_app(root)) as c:  # a restarted server
        page = c.get("/api/tomograms").json()["page"]
        assert page == {**state, "slab": 0, "thresholds": {"ribo": 0.42, "third": 0.7}}
