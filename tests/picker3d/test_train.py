"""ProPicker training: simulated corpus, batch sampling, and exact resume after an interruption."""

import numpy as np
import pytest
import torch

from cryopick.picker3d.train.corpus import CorpusConfig, load_corpus, make_corpus
from cryopick.picker3d.train.finetune import occupancy_from_picks
from cryopick.picker3d.train.loop import TrainConfig, train
from cryopick.picker3d.train.sampling import SampleConfig, sample_batch

TINY_CORPUS = CorpusConfig(shape=(32, 48, 48), classes_per_tomogram=3, n_particles=(6, 8), diameter_A=(60, 120),
                           membranes=(0, 0), gold_beads=(0, 1))
TINY_MODEL = {"widths": [4, 8], "encoder_widths": [4, 4]}


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool")
    make_corpus(path, 2, seed=5, config=TINY_CORPUS, progress=False)
    return path


def test_batches_have_prompts_of_present_classes(pool_dir):
    import json

    assert json.loads((pool_dir / "corpus.json").read_text())["config"]["classes_per_tomogram"] == 3
    pool = load_corpus(pool_dir)
    assert len(pool) == 2 and pool[0].set_id == pool[1].set_id  # siblings share classes
    cfg = SampleConfig(window=16, batch=3, prompts=2, negative_prompt_prob=0.0)
    batch = sample_batch(pool, np.random.default_rng(0), cfg)
    x, targets = batch.windows, batch.targets
    assert x.shape == (3, 1, 16, 16, 16) and targets.shape == (3, 2, 16, 16, 16)
    assert batch.prompts.shape == batch.positives.shape == (3, 2, 37, 37, 37)
    assert torch.allclose(x.mean(dim=(1, 2, 3, 4)), torch.zeros(3), atol=1e-4)
    assert set(torch.unique(targets).tolist()) <= {0.0, 1.0}
    # The first prompt of a window is a class present in it; "empty" flags exactly the empty targets.
    assert not batch.empty[:, 0].any()
    assert torch.all((batch.class_ids >= 0) & (batch.class_ids % 1000 < 3))
    assert torch.equal(batch.empty, targets.sum(dim=(2, 3, 4)) == 0)
    # Same seed, same batch (resume relies on it).
    again = sample_batch(pool, np.random.default_rng(0), cfg)
    assert torch.equal(again.windows, x) and torch.equal(again.targets, targets)
    assert torch.equal(again.positives, batch.positives)


def test_contrastive_loss_prefers_class_clusters():
    from cryopick.picker3d.train.losses import contrastive_loss

    ids = torch.tensor([0, 0, 1, 1, -1])
    good = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [1, 1]]), dim=1)
    bad = good[[0, 2, 1, 3, 4]]
    assert float(contrastive_loss(good, ids)) < float(contrastive_loss(bad, ids))


def test_resume_gives_the_same_weights(pool_dir, tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(model_kwargs=TINY_MODEL, steps=4, checkpoint_every=1, validate_every=2, lr=1e-2, warmup=1,
                      sample=SampleConfig(window=16, batch=1, prompts=2))
    full = train(cfg, pool_dir, tmp_path / "a", val_pool_dir=pool_dir, n_val_batches=1, progress=False)
    part = train(cfg, pool_dir, tmp_path / "b", val_pool_dir=pool_dir, n_val_batches=1, stop_after=2, progress=False)
    assert not (tmp_path / "b" / "model.pt").exists()
    resumed = train(cfg, pool_dir, tmp_path / "b", val_pool_dir=pool_dir, n_val_batches=1, progress=False)
    sa, sp, sr = full.state_dict(), part.state_dict(), resumed.state_dict()
    assert any(not torch.equal(sa[k], sp[k]) for k in sa)  # the interrupted run really stopped early
    for k in sa:
        assert torch.equal(sa[k], sr[k]), k
    assert (tmp_path / "b" / "model.pt").exists() and (tmp_path / "b" / "best.pt").exists()
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_occupancy_targets_are_balls():
    t = occupancy_from_picks((20, 30, 40), np.array([[10.0, 15.0, 5.0], [0.0, 0.0, 0.0]]), diameter=10, fraction=1.0)
    assert t[5, 15, 10] == 1 and t[5, 15, 15] == 1 and t[5, 15, 16] == 0
    assert t[0, 0, 0] == 1 and t.sum() == pytest.approx(515 + 515 / 8, rel=0.2)


def test_export_records_settings_with_the_best_mean_f1(pool_dir, tmp_path, monkeypatch):
    import pandas as pd

    import cryopick.picker3d.sweep as cal
    from cryopick.models.promptable3d import build_propicker_small, load_propicker
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.train.finetune import recommend_settings
    from cryopick.picker3d.train.loop import export_weights

    torch.set_num_threads(1)
    model = build_propicker_small(**TINY_MODEL)
    ckpt = tmp_path / "m.pt"
    model.save(ckpt)
    # Two classes whose per-class optima differ: the recommendation is the best *mean*, not either optimum.
    grid = [(0.3, 0.1, 1.2), (0.5, 0.1, 1.2), (0.5, 0.0, np.inf)]
    f1_by_call = iter([[0.9, 0.8, 0.7], [0.1, 0.7, 0.6]] * 10)  # class A alone would choose grid[0]

    def fake_sweep(prob, truth, diameter, **kw):
        rows = [{"threshold": t, "min_factor": a, "max_factor": b, "f1": f} for (t, a, b), f in zip(grid, next(f1_by_call))]
        table = pd.DataFrame(rows)
        return cal.SweepResult(table, table.iloc[int(table["f1"].idxmax())].to_dict())

    monkeypatch.setattr(cal, "sweep_cluster", fake_sweep)
    rec = recommend_settings(model, pool_dir, min_instances=1)
    assert rec["val_pick_classes"] >= 2
    assert (rec["default_threshold"], rec["default_min_factor"], rec["default_max_factor"]) == (0.5, 0.1, 1.2)
    exported = export_weights(ckpt, tmp_path / "small.pt", pool_dir, n_val_batches=1, window=16, min_instances=1)
    loaded = load_propicker(tmp_path / "small.pt")
    assert loaded.meta["default_threshold"] == exported.meta["default_threshold"]
    s = default_settings(loaded)
    assert (s.threshold, s.min_factor, s.max_factor) == (loaded.meta["default_threshold"],
                                                         loaded.meta["default_min_factor"],
                                                         loaded.meta["default_max_factor"])
