"""Issue 27 item 1, the app's side: what the model card says the user should know (its ``notes``, the
calibration's note) reaches the page: in ``/api/project``, in a finished Train job's status, and as a
visible notice under the model card."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("starlette", reason="the app needs the 'app' extra (starlette, uvicorn)")
from starlette.testclient import TestClient  # noqa: E402

from cryopick.app import create_app  # noqa: E402

SPARSE = ("sparse annotation: 5 labelled of about 640 particles per micrograph; trained with the "
          "positive-unlabelled loss")
NO_VALIDATION = "no labelled particles in the validation data; default threshold used"


def finished_train_job(root, notes=(SPARSE,), calibration_note=NO_VALIDATION):
    """A model card and the record of the Train job that wrote it, as a finished job leaves them."""
    (root / "model").mkdir(parents=True, exist_ok=True)
    card = {"backbone": "unet2d", "diameter": 20.0, "score_threshold": 0.5, "notes": list(notes),
            "calibration": {"threshold": 0.5, "f1": None, "note": calibration_note},
            "training": {"best_val_f1": None}, "created": "2026-12-07"}
    (root / "model" / "card.json").write_text(json.dumps(card))
    job = root / ".cryopick-app" / "jobs" / "20261207-220000-abcdef"
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"id": job.name, "kind": "train", "params": {}, "started": time.time()}))
    (job / "result.json").write_text(json.dumps({"state": "done", "threshold": 0.5, "micrographs": ["mic_0"],
                                                 "particles": 5, "negatives": 0, "accepted": 0}))


def test_card_notes_reach_the_project_and_the_train_jobs_status(project):
    root, _ = project
    finished_train_job(root, notes=(SPARSE, NO_VALIDATION))  # said twice: shown once
    with TestClient(create_app(root)) as c:
        assert c.get("/api/project").json()["model"]["notes"] == [SPARSE, NO_VALIDATION]
        job = c.get("/api/jobs/current").json()
        assert job["state"] == "done" and job["notes"] == [SPARSE, NO_VALIDATION]
        assert job["card"]["notes"] == [SPARSE, NO_VALIDATION]


def test_a_card_without_notes_has_none(project):
    root, _ = project
    finished_train_job(root, notes=(), calibration_note=None)
    with TestClient(create_app(root)) as c:
        assert c.get("/api/project").json()["model"]["notes"] == []
        assert c.get("/api/jobs/current").json()["notes"] == []


def test_the_page_shows_the_cards_notes(project):
    from .test_browser import CHROMIUM, Server, sync_api  # skipped like the browser tests when chromium is missing

    root, _ = project
    finished_train_job(root)
    s = Server(root)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1400, "height": 820}).new_page()
            page.goto(s.url)
            notes = page.locator("#model-notes li")
            sync_api.expect(notes).to_have_count(2, timeout=10000)
            sync_api.expect(page.locator("#model-notes")).to_be_visible()
            assert notes.all_text_contents() == [SPARSE, NO_VALIDATION]
            browser.close()
    finally:
        s.stop()
