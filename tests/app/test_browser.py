"""``cryopick app`` in a real browser: Playwright driving Debian's chromium against a live uvicorn server.

Skipped (with the reason) only when chromium or the playwright package is missing; ``.ci/run``
installs both. ``CRYOPICK_APP_SCREENSHOTS=DIR`` saves the README's screenshots there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import starfile

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn")

from cryopick.app import create_app  # noqa: E402

SHOTS = os.environ.get("CRYOPICK_APP_SCREENSHOTS")


class Server:
    """uvicorn serving a project in a thread; ``restart`` stops it and starts a fresh app on the same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.start()

    def start(self) -> None:
        config = uvicorn.Config(create_app(self.root), host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started, "uvicorn did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def server(project):
    root, truth = project
    s = Server(root)
    yield s, root, truth
    s.stop()


def open_page(browser, url):
    page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
    page.goto(url)
    page.wait_for_function("window.cryopick && window.cryopick.img && window.cryopick.current")
    return page


def screen(page, x, y):
    """Page coordinates of the centre of original pixel (x, y)."""
    return page.evaluate("""([x, y]) => { const r = document.getElementById('canvas').getBoundingClientRect();
        const S = window.cryopick; return [r.left + S.panX + (x + 0.5) * S.zoom, r.top + S.panY + (y + 0.5) * S.zoom]; }""",
                         [x, y])


def same_points(a, b, tol: float = 0.01) -> bool:
    """Whether two lists of coordinates hold the same points (any order), each within ``tol``."""
    a, b = np.asarray(a, float).reshape(len(a), -1), np.asarray(b, float).reshape(len(b), -1)
    if a.shape != b.shape:
        return False
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1) <= tol
    return bool(d.any(axis=1).all() and d.any(axis=0).all() and len(a) == len(b))


def count(page):
    return int(page.text_content("#ann-count").split()[0])


def saved(page):
    sync_api.expect(page.locator("#save-state")).to_have_text("saved", timeout=10000)


def disk(root, name="mic_0"):
    path = root / "annotations" / f"{name}_manualpick.star"
    return starfile.read(path)[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy() if path.is_file() else np.zeros((0, 2))


def test_annotate_with_mouse_and_keys_persists_and_conflicts_are_resolved(browser, server):
    s, root, truth = server
    page = open_page(browser, s.url)
    assert page.text_content("#mic-name") == "mic_0"
    page.mouse.click(*screen(page, 60, 60))
    page.mouse.click(*screen(page, 150, 100))
    page.mouse.click(*screen(page, 200, 200))
    assert count(page) == 3
    saved(page)
    # drag the first particle from (60, 60) to about (80, 90)
    page.mouse.move(*screen(page, 60, 60))
    page.mouse.down()
    page.mouse.move(*screen(page, 70, 75), steps=4)
    page.mouse.move(*screen(page, 80, 90), steps=4)
    page.mouse.up()
    # right-click deletes the second; hovering the third and pressing Delete deletes it
    page.mouse.click(*screen(page, 150, 100), button="right")
    page.mouse.move(*screen(page, 201, 201))
    page.keyboard.press("Delete")
    assert count(page) == 1
    saved(page)
    page.wait_for_timeout(300)
    coords = disk(root)
    assert coords.shape == (1, 2) and np.hypot(*(coords[0] - [80, 90])) < 3, coords
    # the diameter typed in Å is stored in pixels (the test micrographs have 2 Å/px)
    page.select_option("#diameter-unit", "A")
    page.fill("#diameter", "48")
    page.press("#diameter", "Enter")
    sync_api.expect(page.locator("#save-state")).to_have_text("diameter saved")
    assert json.loads((root / "app.json").read_text())["diameter"] == 24.0
    page.select_option("#diameter-unit", "px")
    page.fill("#diameter", "20")
    page.press("#diameter", "Enter")
    sync_api.expect(page.locator("#diameter-a")).to_contain_text("= 40 Å")
    page.evaluate("document.activeElement.blur()")
    # n / p move between micrographs
    page.keyboard.press("n")
    sync_api.expect(page.locator("#mic-name")).to_have_text("mic_1")
    page.keyboard.press("p")
    sync_api.expect(page.locator("#mic-name")).to_have_text("mic_0")
    sync_api.expect(page.locator("#ann-count")).to_have_text("1 particles")
    # reload, then restart the server: the edits are there
    page.reload()
    page.wait_for_function("window.cryopick && window.cryopick.img")
    assert count(page) == 1
    s.restart()
    page.reload()
    page.wait_for_function("window.cryopick && window.cryopick.img")
    assert count(page) == 1
    # an edit made while the server is down is kept in the page and saved once it is back, even over a reload
    s.stop()
    page.mouse.click(*screen(page, 120, 180))
    sync_api.expect(page.locator("#save-state")).to_contain_text("not saved", timeout=10000)
    s.start()
    saved(page)
    assert len(disk(root)) == 2
    s.stop()
    page.mouse.click(*screen(page, 120, 180), button="right")  # removed while down, then the tab is closed
    sync_api.expect(page.locator("#save-state")).to_contain_text("not saved", timeout=10000)
    context = page.context
    page.close()
    s.start()
    page = context.new_page()  # the same browser profile, as when reopening the URL
    page.goto(s.url)
    page.wait_for_function("window.cryopick && window.cryopick.img")
    saved(page)
    assert count(page) == 1 and len(disk(root)) == 1
    # two tabs on one micrograph: the second writer gets a conflict and keeps both by merging
    other = open_page(browser, s.url)
    page.mouse.click(*screen(page, 40, 200))
    saved(page)
    other.mouse.click(*screen(other, 200, 40))
    sync_api.expect(other.locator("#conflict")).to_be_visible(timeout=10000)
    assert len(disk(root)) == 2  # nothing of the first tab's edit was overwritten
    other.click("#conflict-merge")
    saved(other)
    sync_api.expect(other.locator("#ann-count")).to_have_text("3 particles")
    other.wait_for_timeout(300)
    assert len(disk(root)) == 3
    other.close()
    page.close()


def test_train_pick_review_and_export(browser, server):
    s, root, truth = server
    from starlette.testclient import TestClient

    with TestClient(create_app(root)) as c:  # annotations as a user would have made them (saves browser time)
        for name in ("mic_0", "mic_1"):
            c.put(f"/api/micrographs/{name}/annotations", json={"version": "0", "coords": truth[name].tolist()})
    page = open_page(browser, s.url)
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "app_annotate.png"))
    page.click("#panel details summary")
    for sel, value in (("#epochs", "4"), ("#steps", "10"), ("#max-minutes", "1"), ("#patch", "64"), ("#batch", "4")):
        page.fill(sel, value)
    page.click("#train")  # started, then cancelled from the page
    sync_api.expect(page.locator("#job-state")).to_contain_text("train: running", timeout=10000)
    page.click("#cancel")
    sync_api.expect(page.locator("#job-state")).to_contain_text("train: cancelled", timeout=20000)
    page.click("#train")
    sync_api.expect(page.locator("#job-state")).to_contain_text("train: running", timeout=10000)
    sync_api.expect(page.locator("#job-state")).to_contain_text("epoch", timeout=60000)  # live progress
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "app_train.png"))
    sync_api.expect(page.locator("#job-state")).to_contain_text("train: done", timeout=90000)
    sync_api.expect(page.locator("#model-card")).to_contain_text("threshold", timeout=10000)
    # what the card says the user should know is on the page, as it says it (issue 27 item 1)
    from cryopick.app.project import card_notes

    notes = card_notes(json.loads((root / "model" / "card.json").read_text()))
    sync_api.expect(page.locator("#model-notes li")).to_have_count(len(notes))
    assert page.locator("#model-notes li").all_text_contents() == notes
    assert page.locator("#model-notes").is_visible() == bool(notes)
    page.click("#pick")
    sync_api.expect(page.locator("#job-state")).to_contain_text("pick: done", timeout=90000)
    page.click("#suggest")  # the only micrograph not annotated, with the reason
    sync_api.expect(page.locator("#suggestions li")).to_have_count(1, timeout=10000)
    sync_api.expect(page.locator("#suggestions li")).to_contain_text("mic_2")
    sync_api.expect(page.locator("#suggestions li")).to_contain_text("of the threshold")
    page.click("#mic-list li[data-name=mic_2]")
    sync_api.expect(page.locator("#mic-name")).to_have_text("mic_2")
    sync_api.expect(page.locator("#pick-count")).to_contain_text("picks ≥", timeout=10000)

    def shown():
        return int(page.text_content("#pick-count").split()[0])

    slider = page.locator("#threshold")
    if SHOTS:  # at the calibrated threshold, as the page opens
        page.screenshot(path=str(Path(SHOTS) / "app_review.png"))
    slider.fill("0.05")
    low = shown()
    slider.fill("1")
    high = shown()
    assert low > high, (low, high)
    slider.fill("0.3")
    n = shown()
    assert n > 0
    drawn = page.evaluate("window.cryopick.picks.scores.filter(s => s >= 0.3).length")
    assert drawn == n
    page.locator("#min-distance").fill("1.5")  # display-side minimum distance, in particle diameters
    from cryopick.app.review import visible  # the server's rule: the page draws exactly its picks

    coords, scores = page.evaluate("[window.cryopick.picks.coords, window.cryopick.picks.scores]")
    kept = visible(coords, scores, [], 0.3, 1.5 * 20, 20 / 4)
    assert page.evaluate("visiblePicks()") == kept and 0 < shown() == len(kept) <= n
    page.locator("#min-distance").fill("0")
    assert shown() == n
    xy = page.evaluate("(() => { const S = window.cryopick; return S.picks.coords[S.picks.scores.findIndex(s => s >= 0.3)]; })()")
    page.mouse.click(*screen(page, *xy), button="right")  # reject one pick in review
    sync_api.expect(page.locator("#pick-count")).to_contain_text(f"{n - 1} picks", timeout=10000)
    n -= 1
    accepted = page.evaluate("visiblePicks()")  # what the page shows
    assert len(accepted) == n and xy not in accepted  # the rejected pick is the one missing
    page.click("#accept")  # the reviewed picks become annotations (for a second round of training)
    sync_api.expect(page.locator("#ann-count")).to_have_text(f"{n} particles", timeout=10000)
    sync_api.expect(page.locator("#save-state")).to_have_text(f"accepted {n} picks", timeout=10000)
    row = page.locator("#mic-list li[data-name=mic_2]")  # the list's counts: annotated / picked / accepted
    sync_api.expect(row).to_contain_text(f"annotated {n}", timeout=10000)
    sync_api.expect(row).to_contain_text(f"accepted {n}")
    sync_api.expect(page.locator("#mic-list li[data-name=mic_1]")).to_contain_text("to review")
    page.select_option("#filter", "reviewed")  # filter by status
    sync_api.expect(page.locator("#mic-list li")).to_have_count(1, timeout=10000)
    page.select_option("#filter", "all")
    sync_api.expect(page.locator("#mic-list li")).to_have_count(3, timeout=10000)
    page.select_option("#export-format", "relion")
    page.click("#export")
    sync_api.expect(page.locator("#export-result")).to_contain_text("wrote", timeout=10000)
    table = starfile.read(root / "export" / "annotations-relion" / "mic_2_autopick.star")
    exported = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    assert same_points(exported, accepted)  # the very picks accepted, not just as many
    index = starfile.read(root / "export" / "annotations-relion" / "autopick.star")
    assert "rlnMicrographName" in index.columns
    # "picks ≥ threshold" exports what the review shows, the minimum distance included (one rule)
    page.locator("#min-distance").fill("1.5")
    drawn = page.evaluate("visiblePicks()")
    assert 0 < len(drawn) < n
    page.select_option("#export-source", "picks")
    page.click("#export")
    sync_api.expect(page.locator("#export-result")).to_contain_text("particles: export/picks-relion", timeout=10000)
    table = starfile.read(root / "export" / "picks-relion" / "mic_2_autopick.star")
    assert same_points(table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), drawn)
    page.close()


def test_the_pages_review_rule_follows_the_spec(browser, server):
    """The rule both pages draw with (static/review.js, as chromium loads it) against the spec the server's
    Python rule follows too (tests/data/review/visible.json, test_review_rule.py)."""
    s, root, truth = server
    cases = json.loads((Path(__file__).parents[1] / "data" / "review" / "visible.json").read_text())["cases"]
    for url in (s.url, s.url + "tomograms"):
        page = browser.new_context().new_page()
        page.goto(url)
        page.wait_for_function("typeof reviewVisible === 'function'")
        got = page.evaluate("(cases) => cases.map((c) => reviewVisible(c.coords, c.scores, c.rejected, c.threshold,"
                            " c.min_distance, c.near))", cases)
        assert {c["name"]: g for c, g in zip(cases, got)} == {c["name"]: c["shown"] for c in cases}
        page.close()


def test_zoomed_in_view_of_a_large_micrograph_uses_cached_tiles(browser, tmp_path):
    from cryopick.io.images import write_mrc

    root = tmp_path / "big"
    (root / "micrographs").mkdir(parents=True)
    write_mrc(root / "micrographs" / "big.mrc", np.random.default_rng(0).normal(size=(2300, 2300)).astype(np.float32))
    s = Server(root)
    try:
        page = open_page(browser, s.url)
        assert page.evaluate("[window.cryopick.info.levels, window.cryopick.img.width]") == [2, 766]
        assert page.evaluate("window.cryopick.tiles") is None  # the whole micrograph fits: no tiles yet
        x, y = screen(page, 1150, 1150)
        page.mouse.move(x, y)
        for _ in range(12):  # zoom in past the display image's resolution
            page.mouse.wheel(0, -100)
        page.wait_for_function("window.cryopick.zoom >= 1 && window.cryopick.tiles && [...window.cryopick.tiles.map]"
                               ".some(([k, img]) => k.startsWith('0/') && img.complete && img.naturalWidth === 512)",
                               timeout=15000)  # full resolution (level 0) at zoom >= 1, coarser levels on the way
        assert list((root / ".cryopick-app" / "cache").glob("*-tile0-*.png"))  # cached on disk for the next view
        page.close()
    finally:
        s.stop()
