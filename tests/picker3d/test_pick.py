"""ProPicker building blocks: window blending, clustering, TomoTwin layout, network shapes."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopick import CryopickError
from cryopick.models.prompt_encoder import SmallPromptEncoder, TomoTwinEncoder, load_tomotwin, tomotwin_state_dict
from cryopick.models.promptable3d import PromptableUNet3d
from cryopick.picker3d.predict import predict_tomogram, ramp, window_starts
from cryopick.postprocess.cluster3d import cluster_picks, default_size_limits, sphere_volume
from cryopick.preprocess import reflect_index

DATA = Path(__file__).parents[1] / "data" / "tomotwin"


class ConstantModel(torch.nn.Module):
    """Logits = logit(value) everywhere, one channel per prompt."""

    def __init__(self, value: float):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(np.log(value / (1 - value)))))

    def forward(self, x, z):
        return self.logit.expand(x.shape[0], z.shape[0], *x.shape[2:]).clone()


class BrightModel(torch.nn.Module):
    """Logit +10 where the z-scored window exceeds 2, -10 elsewhere (a position-faithful 'segmenter')."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, z):
        return (torch.where(x > 2.0, 10.0, -10.0) + 0 * self.dummy).expand(-1, z.shape[0], -1, -1, -1)


def test_window_grid_covers_and_reflects():
    for n in (1, 20, 64, 65, 100, 200):
        s = window_starts(n, 64, 32)
        assert s[0] <= 0 and s[-1] + 64 >= n
        assert np.all(np.diff(s) == 32)
    np.testing.assert_array_equal(reflect_index(np.arange(-3, 8), 5), [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    w = ramp(64)
    assert w.min() > 0 and w[31] == w[32] == w.max()


@pytest.mark.parametrize("shape,stride", [((40, 70, 90), 32), ((64, 64, 64), 16), ((17, 100, 33), 24)])
def test_constant_map_blends_to_the_same_constant(shape, stride):
    vol = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    prob = predict_tomogram(ConstantModel(0.3), vol, torch.zeros(2, 32), window=64, stride=stride,
                            bf16=False, progress=False)
    assert prob.shape == (2,) + shape
    np.testing.assert_allclose(prob, 0.3, atol=1e-5)


def test_blending_keeps_positions(tmp_path):
    vol = np.zeros((50, 90, 110), np.float32)
    zz, yy, xx = np.indices(vol.shape)
    centres = [(10, 20, 30), (40, 70, 100), (25, 45, 5)]
    for c in centres:
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 9] = 1.0
    # Also through the memory-mapped output path.
    prob = predict_tomogram(BrightModel(), vol, torch.zeros(1, 32), stride=32, bf16=False, progress=False,
                            in_memory_limit_gb=0.0, scratch=tmp_path)
    inside = vol > 0.5
    assert prob[0][inside].min() > 0.5
    assert prob[0][~inside].max() < 0.5


def _spheres(shape, centres, radius):
    zz, yy, xx = np.indices(shape)
    vol = np.zeros(shape, np.float32)
    for x, y, z in centres:
        vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= radius**2] = 0.9
    return vol


def test_clustering_finds_sphere_centres_and_applies_size_limits():
    rng = np.random.default_rng(3)
    centres = np.array([[12, 15, 10], [40, 20, 30], [25, 50, 22], [60, 60, 12], [10, 55, 35]], float)
    prob = _spheres((48, 72, 72), centres, 5)
    prob[20:23, 5:8, 60:63] = 0.95  # a 27-voxel blob, far below 0.1 x sphere volume (d = 10 -> 52)
    prob += rng.uniform(0, 0.2, prob.shape).astype(np.float32)
    coords, scores = cluster_picks(prob, threshold=0.5, diameter=10)
    assert len(coords) == len(centres)
    order = np.lexsort(coords.T[::-1])
    np.testing.assert_allclose(coords[order], centres[np.lexsort(centres.T[::-1])], atol=0.05)
    assert np.all(scores > 0.9)
    # Without size limits the small blob is picked too; a max size below a sphere drops the spheres.
    assert len(cluster_picks(prob, threshold=0.5)[0]) == len(centres) + 1
    assert len(cluster_picks(prob, threshold=0.5, max_size=100)[0]) == 1
    lo, hi = default_size_limits(10)
    assert lo == pytest.approx(0.1 * sphere_volume(10)) and hi == pytest.approx(1.2 * sphere_volume(10))


def test_clustering_nms_merges_touching_duplicates():
    prob = _spheres((30, 40, 60), [[15, 20, 15], [27, 20, 15]], 5)
    prob[15, 20, 21] = 0.0  # cut the bridge so two components remain
    prob[15, 20, 20:23] = 0.0
    coords, _ = cluster_picks(prob, threshold=0.5)
    assert len(coords) == 2
    assert len(cluster_picks(prob, threshold=0.5, min_distance=20)[0]) == 1


def _tsv_shapes():
    rows = []
    for line in (DATA / "keys_siamese3d.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def test_tomotwin_layout_matches_reference_keys():
    rows = _tsv_shapes()
    assert len(rows) == 46
    with torch.device("meta"):
        model = TomoTwinEncoder()
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == rows
    assert sum(int(np.prod(s)) for _, s in rows) == 77_567_328  # counts the shared norms twice
    shared = sum(int(np.prod(s)) for k, s in rows if k.startswith("conv_layer") and ".4." in k)
    assert sum(p.numel() for p in model.parameters()) == 77_567_328 - shared


def test_tomotwin_checkpoint_loads_unchanged(tmp_path):
    prefix = "module."  # multi-GPU checkpoints; bare keys are checked at the end
    g = torch.Generator().manual_seed(0)
    shared = {}
    state = {}
    for key, shape in _tsv_shapes():
        # TomoTwin applies one GroupNorm twice per block: keys .1 and .4 hold the same tensor.
        norm_key = key.replace(".4.", ".1.") if ".4." in key and key.startswith("conv_layer") else key
        if norm_key not in shared:
            shared[norm_key] = torch.randn(shape, generator=g) * 0.01
        state[prefix + key] = shared[norm_key]
    config = json.loads((DATA / "tomotwin_config_example.json").read_text())
    path = tmp_path / "tomotwin.pth"
    torch.save({"model_state_dict": state, "tomotwin_config": config}, path)
    model = load_tomotwin(path)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len(prefix):]], value)
    # Contrast inversion: TomoTwin sees -x; embeddings are unit vectors.
    sub = torch.randn(2, 37, 37, 37, generator=g)
    prepared = model.prepare(sub)
    assert torch.allclose(prepared.mean(dim=(1, 2, 3, 4)), torch.zeros(2), atol=1e-5)
    assert torch.corrcoef(torch.stack([prepared[0].flatten(), sub[0].flatten()]))[0, 1] < -0.999
    bare = tomotwin_state_dict({"model_state_dict": {k[len(prefix):]: v for k, v in state.items()}})
    assert list(bare) == [k[len(prefix):] for k in state]


def test_tomotwin_rejects_other_checkpoints(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"conv.weight": torch.zeros(3)}}, path)
    with pytest.raises(CryopickError, match="TomoTwin"):
        load_tomotwin(path)


def test_networks_shapes_and_prompt_conditioning():
    torch.manual_seed(0)
    enc = SmallPromptEncoder(widths=(4, 8, 8, 8))
    z = enc.embed(torch.randn(3, 37, 37, 37))
    assert z.shape == (3, 32) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    net = PromptableUNet3d(widths=(4, 8, 8, 8))
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        y = net(x, z)
        assert y.shape == (2, 3, 16, 16, 16)
        # Several prompts in one pass equal one prompt at a time; per-window prompts work too.
        y1 = net(x, z[1:2])
        assert torch.allclose(y[:, 1:2], y1, atol=1e-5)
        yb = net(x, z[None, :2].expand(2, -1, -1))
        assert torch.allclose(yb, y[:, :2], atol=1e-5)
        # Different prompts give different maps.
        assert (y[:, 0] - y[:, 1]).abs().max() > 1e-4


def test_propicker_tm_searches_only_inside_the_mask():
    from cryopick.postprocess.propicker_tm import prompt_template, tm_in_mask, tm_pick

    rng = np.random.default_rng(4)
    shape = (40, 56, 56)
    # An asymmetric particle: a ball with a knob, copies in two orientations (x-mirror = 180° about z).
    g = np.indices((11, 11, 11)) - 5
    particle = ((g ** 2).sum(0) <= 9).astype(np.float32)
    particle[5, 5, 8:10] = 1.0
    vol = rng.normal(0, 0.3, shape).astype(np.float32)
    centres = [(12, 14, 10), (40, 20, 28), (20, 42, 30)]  # x, y, z
    for i, (x, y, z) in enumerate(centres):
        p = particle if i != 1 else particle[:, ::-1, ::-1]
        vol[z - 5 : z + 6, y - 5 : y + 6, x - 5 : x + 6] += p
    sub = np.zeros((1, 37, 37, 37), np.float32)
    sub[0, 13:24, 13:24, 13:24] = particle
    template = prompt_template(sub, diameter=8)
    assert template.shape == (11, 11, 11)
    coords, scores = tm_pick(vol, template, angle_step=90, min_distance=6, min_score=0.5)
    assert len(coords) == 3
    # A mask around the first two particles only: the third is never searched.
    prob = np.zeros(shape, np.float32)
    for x, y, z in centres[:2]:
        prob[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3] = 0.9
    c2, s2 = tm_in_mask(vol, prob, sub, threshold=0.5, diameter=8, angle_step=90, min_score=0.5)
    assert len(c2) == 2
    found = sorted(map(tuple, np.round(c2).astype(int).tolist()))
    assert found == sorted(centres[:2])


def test_registry_builds_both_sizes():
    from cryopick.models.registry import available_models, build_model

    names = available_models()
    assert {"propicker-small", "propicker-paper", "tomotwin", "prompt-encoder-small"} <= set(names)
    small = build_model("propicker-small")
    assert small.segmenter.widths == [16, 32, 64, 64] and small.segmenter.stem_stride == 2
    with torch.device("meta"):  # shapes only: the paper-size network has ~100 M parameters
        paper = build_model("propicker-paper")
        y = paper.segmenter(torch.zeros(1, 1, 64, 64, 64), torch.zeros(2, 32))
    assert paper.segmenter.widths == [108, 216, 432, 864] and isinstance(paper.encoder, TomoTwinEncoder)
    assert y.shape == (1, 2, 64, 64, 64)
    assert any("film" in n for n, _ in paper.segmenter.named_parameters())


def test_prototype_mode_and_warm_start_from_a_plain_network():
    from cryopick.models.promptable3d import _build
    from cryopick.picker3d.train.loop import load_compatible

    torch.manual_seed(1)
    plain = _build("propicker-small", {"widths": [4, 8], "encoder_widths": [4, 4]})
    grown = _build("propicker-small", {"widths": [4, 8], "encoder_widths": [4, 4], "prototype": True})
    assert grown.segmenter.code_dim == 32 + 4
    load_compatible(grown, plain.state_dict())
    prompts = torch.randn(2, 37, 37, 37)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        codes = grown.embed(prompts)
        assert codes.shape == (2, 36)
        # The grown network starts exactly as the plain one (new similarity channels weighted 0).
        assert torch.allclose(grown.segmenter(x, codes), plain.segmenter(x, plain.embed(prompts)), atol=1e-5)
        combined = grown.combine(codes)
        assert combined.shape == (36,) and torch.isclose(combined[:32].norm(), torch.tensor(1.0))


def test_calibration_sweep_finds_settings_that_pick3d_reads(tmp_path):
    from cryopick.picker3d.pick import postprocess
    from cryopick.picker3d.settings import PickSettings
    from cryopick.picker3d.sweep import save_settings, settings_from_best, sweep_cluster

    rng = np.random.default_rng(7)
    centres = np.array([[12, 15, 10], [40, 20, 30], [25, 50, 22], [60, 60, 12]], float)
    prob = _spheres((48, 72, 72), centres, 5) * 0.7  # true particles at p = 0.7
    # Brighter than the particles, but smaller (216 and 8 voxels; a d = 10 sphere has 524): only a
    # minimum size (>= 0.5 x the sphere volume) separates them, which the sweep has to find.
    prob[20:26, 40:46, 8:14] = 0.95
    prob[5:7, 5:7, 60:62] = 0.95
    prob += rng.uniform(0, 0.2, prob.shape).astype(np.float32)
    result = sweep_cluster(prob, centres, diameter=10)
    assert result.best["f1"] == 1.0
    assert len(result.table) > 50 and result.table["f1"].min() < 1.0
    settings = settings_from_best(result.best)
    path = save_settings(tmp_path / "s.json", settings, tomogram="t")
    loaded = PickSettings.load(path)
    assert loaded.threshold == settings["threshold"] and loaded.min_factor == settings["min_factor"]
    coords, _ = postprocess(prob, None, None, loaded, diameter=10)
    assert len(coords) == 4


def test_default_settings_come_from_the_model_meta():
    from cryopick.models.promptable3d import build_propicker_small
    from cryopick.picker3d.settings import default_settings

    model = build_propicker_small()
    model.meta = {}
    bare = default_settings(model)
    assert (bare.threshold, bare.min_factor, bare.max_factor) == (0.5, 0.1, 1.2)
    model.meta = {"default_threshold": 0.4, "default_min_factor": 0.2, "default_max_factor": None}
    s = default_settings(model)
    assert (s.threshold, s.min_factor, s.max_factor, s.mode) == (0.4, 0.2, None, "cluster")
    vol = np.pi / 6 * 10.0**3
    assert s.size_limits(10.0) == (pytest.approx(0.2 * vol), np.inf)
    assert bare.size_limits(10.0) == (pytest.approx(0.1 * vol), pytest.approx(1.2 * vol))
    assert bare.size_limits(None) == (None, None)
    assert replace(bare, min_size=5.0).size_limits(10.0) == (5.0, pytest.approx(1.2 * vol))


def test_clustering_drops_components_dissimilar_to_the_prompt():
    centres = np.array([[12, 15, 10], [40, 20, 30], [25, 50, 22], [60, 60, 12]], float)
    prob = _spheres((48, 72, 72), centres, 5)

    def similarity(coords):  # particles left of x = 30 look like the prompt
        return np.where(np.asarray(coords)[:, 0] < 30, 0.9, 0.2)

    coords, _ = cluster_picks(prob, threshold=0.5, diameter=10, similarity=similarity, min_similarity=0.5)
    assert len(coords) == 2 and np.all(coords[:, 0] < 30)
    assert len(cluster_picks(prob, threshold=0.5, diameter=10, similarity=similarity)[0]) == 4  # no minimum: no check
    with pytest.raises(ValueError):
        cluster_picks(prob, threshold=0.5, min_similarity=0.5)


def test_calibration_sweep_finds_the_similarity_that_removes_other_particles(tmp_path):
    from cryopick.picker3d.pick import postprocess
    from cryopick.picker3d.settings import PickSettings
    from cryopick.picker3d.sweep import save_settings, settings_from_best, sweep_cluster

    true = np.array([[12, 15, 10], [40, 20, 30], [25, 50, 22]], float)
    other = np.array([[60, 60, 12], [60, 15, 36]], float)  # same size and probability: only similarity tells
    prob = _spheres((48, 72, 72), np.concatenate([true, other]), 5) * 0.8
    far = lambda c: np.linalg.norm(np.asarray(c)[:, None] - other[None], axis=2).min(1) < 3  # noqa: E731
    similarity = lambda c: np.where(far(c), 0.35, 0.75)  # noqa: E731
    plain = sweep_cluster(prob, true, diameter=10)
    assert plain.best["f1"] == pytest.approx(0.75)
    result = sweep_cluster(prob, true, diameter=10, similarity=similarity)
    assert result.best["f1"] == 1.0 and 0.35 < result.best["min_similarity"] <= 0.75
    assert result.table["min_similarity"].isna().any()  # the sweep includes "no check"
    settings = settings_from_best(result.best)
    loaded = PickSettings.load(save_settings(tmp_path / "s.json", settings))
    assert loaded.min_similarity == settings["min_similarity"]
    coords, _ = postprocess(prob, None, None, loaded, diameter=10, similarity=similarity)
    assert len(coords) == 3
    assert settings_from_best(plain.best)["min_similarity"] is None


def test_prompt_similarity_of_the_prompt_itself_is_one_and_is_cached():
    from cryopick.models.promptable3d import build_propicker_small
    from cryopick.picker3d.prompt import cut_prompt
    from cryopick.picker3d.similarity import PromptSimilarity

    torch.manual_seed(0)
    model = build_propicker_small(widths=[4, 8], encoder_widths=[4, 4]).eval()
    volume = np.random.default_rng(1).normal(size=(48, 60, 60)).astype(np.float32)
    at = np.array([[30.0, 25.0, 20.0], [12.0, 40.0, 30.0]])
    code = model.combine(model.embed(cut_prompt(volume, at[0])[None]))
    sim = PromptSimilarity(model, volume, code, bf16=False)
    values = sim(at)
    assert values[0] == pytest.approx(1.0, abs=1e-5) and -1.0 <= values[1] < values[0]
    calls = []
    sim._similarity = lambda subs: calls.append(len(subs)) or np.zeros(len(subs))
    np.testing.assert_allclose(sim(at[::-1] + 0.2), values[::-1])  # same voxels: from the cache
    assert calls == []


def test_refined_code_adds_the_most_similar_first_pass_picks():
    from cryopick.models.promptable3d import build_propicker_small
    from cryopick.picker3d.pick import refined_code
    from cryopick.picker3d.prompt import Prompt, cut_prompt, flipped_views, prompt_embedding
    from cryopick.picker3d.settings import PickSettings
    from cryopick.picker3d.similarity import PromptSimilarity

    torch.manual_seed(0)
    model = build_propicker_small(widths=[4, 8], encoder_widths=[4, 4]).eval()
    volume = np.random.default_rng(2).normal(size=(48, 72, 72)).astype(np.float32)
    centres = np.array([[12, 15, 10], [40, 20, 30], [25, 50, 22], [60, 60, 12]], float)
    prob = _spheres(volume.shape, centres, 5)
    prompt = Prompt(cut_prompt(volume, centres[0])[None], centres[:1], "t", 10.0, 1.0, 10.0, "p")
    code = prompt_embedding(model, prompt)
    settings = PickSettings(threshold=0.5, min_similarity=None)
    sim = PromptSimilarity(model, volume, code)
    best = centres[np.argsort(-sim(centres), kind="stable")[:2]]
    examples = np.stack([prompt.subvolumes[0]] + [cut_prompt(volume, c) for c in best])
    expected = model.combine(model.embed(flipped_views(examples)))
    refined = refined_code(model, volume, prob, prompt, settings, 2)
    torch.testing.assert_close(refined, expected)
    assert torch.isclose(refined[:32].norm(), torch.tensor(1.0))
    # Nothing above the threshold: the prompt's own code.
    torch.testing.assert_close(refined_code(model, volume, prob * 0, prompt, settings, 2), code)


def test_pick_tomogram_refine_segments_twice_with_the_refined_code(monkeypatch):
    import cryopick.picker3d.pick as P
    from cryopick.io.images import Image
    from cryopick.models.promptable3d import build_propicker_small
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.settings import PickSettings

    torch.manual_seed(0)
    model = build_propicker_small(widths=[4, 8], encoder_widths=[4, 4]).eval()
    volume = np.random.default_rng(3).normal(size=(32, 48, 48)).astype(np.float32)
    image = Image(volume, pixel_size=10.0, path=Path("t.mrc"))
    prompt = Prompt(cut_prompt(volume, (20, 20, 16))[None], np.array([[20.0, 20.0, 16.0]]), "t", 10.0, 1.0,
                      8.0, "p")
    codes = []
    real = P.predict_tomogram
    monkeypatch.setattr(P, "predict_tomogram", lambda seg, vol, z, **kw: codes.append(z.clone()) or real(seg, vol, z, **kw))
    refined = torch.ones(model.segmenter.code_dim)
    monkeypatch.setattr(P, "refined_code", lambda *a, **kw: refined)
    settings = PickSettings(threshold=0.5, refine=3)
    picks = P.pick_tomogram(image, [prompt], model, settings, window=32, stride=16, progress=False)
    assert len(codes) == 2 and torch.equal(codes[1][0], refined)
    assert set(picks.table["label"]) <= {"p"}
    codes.clear()
    P.pick_tomogram(image, [prompt], model, settings, window=32, stride=16, progress=False, refine=0)
    assert len(codes) == 1  # the argument overrides the settings
