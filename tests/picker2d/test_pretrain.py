"""The pretrained default 2D backbone: corpus honesty, resumable pretraining, export, and that the
shipped weights load and beat a random start after one short epoch on an unseen simulated particle."""

import warnings

import numpy as np
import pytest
import torch

from cryopick import CryopickError
from cryopick.models.registry import build_model
from cryopick.models.unet2d import PRETRAINED_2D, has_pretrained_2d, load_pretrained_2d, load_weights_2d
from cryopick.picker2d.train import TrainConfig, WorkingScale, train_picker
from cryopick.picker2d.train import pretrain as pretrain_mod
from cryopick.picker2d.train.augment import AugmentConfig, augment_preset
from cryopick.picker2d.train.config import initial_weights
from cryopick.picker2d.train.corpus import HELD_OUT_KINDS, corpus_kinds, draw_settings, simulate_corpus_micrograph
from cryopick.picker2d.train.data import TrainingMicrograph
from cryopick.picker2d.train.pretrain import PretrainConfig, export_pretrained, pretrain

shipped = pytest.mark.skipif(not PRETRAINED_2D.is_file(), reason="pretrained 2D weights not in the package")


def test_corpus_excludes_the_leave_one_out_families():
    kinds = corpus_kinds()
    assert not set(kinds) & set(HELD_OUT_KINDS) and len(kinds) >= 5
    drawn = {draw_settings(i)["kind"] for i in range(200)}
    drawn |= {(draw_settings(i)["distractor"] or {}).get("kind", kinds[0]) for i in range(200)}
    assert drawn <= set(kinds)
    assert draw_settings(7) == draw_settings(7) and draw_settings(7) != draw_settings(8)
    renders = {draw_settings(i)["render"] for i in range(200)}
    assert renders == {"raw", "float", "denoised8", "jpeg"}


def test_corpus_micrograph_is_at_the_working_scale():
    settings = next(s for s in (draw_settings(i, working_size=64) for i in range(50))
                    if s["regime"] == "dense" and s["distractor"] is None)
    m = simulate_corpus_micrograph(settings)
    assert abs(m.image.shape[0] - 64) <= 2 and np.isfinite(m.image).all()
    assert len(m.coords) > 0 and (m.coords >= -1).all() and (m.coords <= m.image.shape[0] + 1).all()


TINY_PRE = dict(steps=4, working_size=64, pool_size=2, refresh_every=2, patch_size=32, batch_size=2,
                warmup_steps=1, checkpoint_every=2, val_every=2, val_micrographs=1, num_threads=1)


def test_pretraining_resumes_exactly_and_exports_float16(tmp_path, monkeypatch):
    ref = pretrain(tmp_path / "ref", PretrainConfig(**TINY_PRE), log_every=100)
    calls = {"n": 0}
    real = pretrain_mod.batch_loss

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pretrain_mod, "batch_loss", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "run", PretrainConfig(**TINY_PRE), log_every=100)
    monkeypatch.setattr(pretrain_mod, "batch_loss", real)
    again = pretrain(tmp_path / "run", PretrainConfig(**TINY_PRE), log_every=100)
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["step"] for h in again["history"]] == [h["step"] for h in ref["history"]] == [2, 4]
    with pytest.raises(CryopickError, match="other settings"):
        pretrain(tmp_path / "run", PretrainConfig(**dict(TINY_PRE, lr=1e-3)))
    out = export_pretrained(tmp_path / "ref" / "best.pt", tmp_path / "w.pt", note={"commit": "abc"})
    state = torch.load(out, weights_only=False)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())
    assert state["meta"]["commit"] == "abc"
    model = build_model("unet")
    assert has_pretrained_2d(model, out) and not has_pretrained_2d(build_model("unet-small"), out)
    meta = load_pretrained_2d(model, out)
    assert meta["file"] == "w.pt"
    ref_w = torch.load(tmp_path / "ref" / "best.pt", weights_only=False)["model"]
    assert torch.allclose(model.state_dict()["head.weight"], ref_w["head.weight"], atol=1e-3)
    # a copy of the resumable checkpoint exports its averaged weights (= last.pt at the end of the run)
    from_ckpt = torch.load(export_pretrained(tmp_path / "ref" / "checkpoint.pt", tmp_path / "c.pt"), weights_only=False)
    last = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    assert all(torch.allclose(from_ckpt["model"][k].float(), last[k].float(), atol=2e-3) for k in last
               if last[k].is_floating_point())


def test_pretrained_weights_fit_their_width_and_depth_or_deeper(tmp_path):
    from cryopick.models.unet2d import weights_architecture_2d

    for kwargs in ({}, {"depth": 4}, {"base_channels": 8, "depth": 2}):
        model = build_model("unet", **kwargs)
        found = weights_architecture_2d(model.state_dict())
        assert found == {k: model.config[k] for k in ("base_channels", "depth")}
    deep = build_model("unet", depth=4)
    torch.save({"model": deep.state_dict()}, tmp_path / "deep.pt")
    assert has_pretrained_2d(build_model("unet", depth=4, dropout=0.3), tmp_path / "deep.pt")
    assert has_pretrained_2d(build_model("unet", depth=5), tmp_path / "deep.pt")  # grows into a deeper one
    assert not has_pretrained_2d(build_model("unet"), tmp_path / "deep.pt")  # never cut down
    assert not has_pretrained_2d(build_model("unet", base_channels=8, depth=4), tmp_path / "deep.pt")
    with pytest.raises(ValueError, match="depth 4"):
        load_weights_2d(build_model("unet"), deep.state_dict())
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    assert not has_pretrained_2d(deep, tmp_path / "broken.pt")
    if PRETRAINED_2D.is_file():  # the shipped depth-3 file fits the default unet and deeper ones of its width
        assert has_pretrained_2d(build_model("unet")) and has_pretrained_2d(deep)
        assert not has_pretrained_2d(build_model("unet", depth=2))


def _smooth_image(seed: int, size: int = 128) -> torch.Tensor:
    noise = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    image = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    return (image - image.mean()) / image.std()


@pytest.mark.parametrize("added", [1, 2])
def test_grown_network_starts_from_what_the_shallow_one_computes(added):
    torch.manual_seed(added)
    shallow = build_model("unet", base_channels=8, depth=2, dropout=0.0)
    with torch.no_grad():  # batch norms away from their defaults, as after training
        for module in shallow.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    deep = build_model("unet", base_channels=8, depth=2 + added, dropout=0.0)
    assert load_weights_2d(deep, shallow.state_dict()) == added
    weights = deep.state_dict()
    for key, value in shallow.state_dict().items():  # every shared tensor where it belongs
        part = key.split(".")
        if part[0] in ("up", "merge"):
            part[1] = str(int(part[1]) + added)
        assert torch.equal(weights[".".join(part)], value), key
    image = _smooth_image(added)
    shallow.train(), deep.train()  # batch statistics, as in fine-tuning
    with torch.no_grad():
        before, after = shallow(image).flatten(), deep(image).flatten()
    assert np.corrcoef(before, after)[0, 1] > 0.99
    assert (after - before).abs().mean() < 0.1 * before.std()
    fresh = build_model("unet", base_channels=8, depth=2 + added, dropout=0.0).train()
    with torch.no_grad():
        assert np.corrcoef(before, fresh(image).flatten())[0, 1] < 0.9  # the check can fail


@shipped
def test_shipped_weights_start_a_deeper_network():
    meta = initial_weights(build_model("unet", depth=4), TrainConfig(init="pretrained", backbone_kwargs={"depth": 4}))
    assert meta["init"] == "pretrained" and meta["added_levels"] == 1


def test_init_option_is_checked_and_recorded():
    with pytest.raises(CryopickError, match="init"):
        TrainConfig(init="imagenet").validate()
    assert initial_weights(build_model("unet"), TrainConfig(init="random")) == {"init": "random"}
    other = initial_weights(build_model("unet-small"), TrainConfig(backbone="unet-small", init="pretrained"))
    assert other["init"] == "random" and "no shipped pretrained weights" in other["note"]


def test_cli_init_choice():
    import argparse

    from cryopick.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_args(parser)
    base = ["--micrographs", "m", "--coords", "c", "--diameter", "50", "-o", "out"]
    assert cli_train.config_from_args(parser.parse_args(base + ["--init", "random"])).init == "random"
    assert cli_train.config_from_args(parser.parse_args(base)).init == TrainConfig().init
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--init", "imagenet"])


def _unseen_particle_micrographs(n: int = 2):
    """A shape family held out of the pretraining corpus (dihedral, 150 Å at 3 Å/px, as the benchmark's
    ``sim_raw``), simulated at 3 Å/px and brought to the working scale like user data."""
    from cryopick.picker2d.scale import prepare_image
    from cryopick.simulate.micrograph import simulate_micrograph
    from cryopick.simulate.shapes import procedural_class

    cls = procedural_class("test", "dihedral", 150.0, 3.0, 101)
    factor = 50.0 / 16.0
    mics = []
    for i in range(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = simulate_micrograph([cls], shape=(448, 448), pixel_size=3.0, seed=500 + i, n_particles=25,
                                    crowding=0.3, dose=20.0)
        work, frame = prepare_image(m.image, factor)
        mics.append(TrainingMicrograph(f"m{i}", work, frame.to_working(m.picks.coords), frame))
    return mics, WorkingScale(factor=factor, diameter=50.0, pixel_size=3.0)


@shipped
def test_shipped_weights_beat_random_init_after_one_short_epoch(tmp_path):
    scores = {}
    for init in ("random", "pretrained"):
        mics, scale = _unseen_particle_micrographs()
        config = TrainConfig(init=init, epochs=1, steps_per_epoch=6, batch_size=4, patch_size=64, warmup_steps=2,
                             num_threads=1, progress=False, bf16=False, seed=0, val_fraction=0.3,
                             augment=AugmentConfig(scale_range=1.0, blur=0.0))
        card = train_picker(mics, scale, tmp_path / init, config)
        assert card.training["init"]["init"] == init
        scores[init] = card.training["best_val_f1"]
    assert scores["pretrained"] >= scores["random"] + 0.3, scores


def test_harder_corpus_changes_only_the_particle_contrast():
    for i in range(20):
        easy, hard = draw_settings(i), draw_settings(i, contrast_range=(0.25, 0.8))
        assert 0.25 <= hard["contrast"] <= 0.8 and hard["contrast"] < easy["contrast"]
        assert {k: v for k, v in easy.items() if k != "contrast"} == {k: v for k, v in hard.items() if k != "contrast"}


def test_augmentation_presets():
    assert augment_preset("default") == AugmentConfig()
    strong = augment_preset("strong")
    assert strong.noise > AugmentConfig().noise and strong.blur > AugmentConfig().blur
    with pytest.raises(ValueError, match="strong"):
        augment_preset("wild")


def test_runs_before_particle_contrast_existed_still_resume():
    old = PretrainConfig().resume_key()
    del old["particle_contrast"]
    assert pretrain_mod.saved_settings(old, PretrainConfig().resume_key(), pretrain_mod._ADDED_LATER) \
        == PretrainConfig().resume_key()
    harder = PretrainConfig(particle_contrast=(0.25, 0.8)).resume_key()
    assert harder != PretrainConfig().resume_key() and harder["particle_contrast"] == [0.25, 0.8]


@pytest.mark.parametrize("name, value", [("steps", 0), ("pool_size", -1), ("lr", float("nan")), ("batch_size", 1.5),
                                         ("ema_decay", 1.0), ("patch_size", 512), ("particle_contrast", (0.8, 0.2)),
                                         ("particle_contrast", (0.0, 1.0)), ("particle_contrast", (1.0,))])
def test_pretraining_settings_are_checked(tmp_path, name, value):
    with pytest.raises(CryopickError, match=name):
        pretrain(tmp_path / "out", PretrainConfig(**{name: value}))
    assert not (tmp_path / "out").exists()
