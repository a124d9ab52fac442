"""All eight official SAM2 / SAM2.1 layouts: the model's tensors match Meta's key/shape lists, the
parameter counts match Meta's, and checkpoints load strictly (or fail with a clear error)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from cryopick.errors import CryopickError
from cryopick.models.registry import available_models, build_model
from cryopick.models.sam2 import CryoFSL
from cryopick.models.sam2.checkpoint import PROMPT_KEYS, load_state
from cryopick.models.sam2.configs import OFFICIAL_CONFIGS, TEST_TINY

DATA = Path(__file__).parents[1] / "data" / "sam2"
TSV = {
    f"{fam}-hiera-{size}": DATA / f"keys_{fam}_hiera_{short}.tsv"
    for fam in ("sam2", "sam2.1")
    for size, short in [("tiny", "t"), ("small", "s"), ("base-plus", "b+"), ("large", "l")]
}


def read_layout(path: Path) -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            layout[key] = tuple(ast.literal_eval(shape))
    return layout


def loaded_part(layout: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The keys the prompt-free picker takes from a checkpoint."""
    return {k: s for k, s in layout.items()
            if k.startswith(("image_encoder.", "sam_mask_decoder.")) or k in PROMPT_KEYS}


def meta_model(name: str) -> CryoFSL:
    with torch.device("meta"):
        return CryoFSL(OFFICIAL_CONFIGS[name])


def test_all_names_registered():
    names = set(available_models("picker2d"))
    assert set(TSV) | {"sam2-test-tiny"} <= names
    assert len(TSV) == 8


@pytest.mark.parametrize("name", sorted(TSV))
def test_layout_matches_meta_keys_and_shapes(name):
    model = meta_model(name)
    ours = {k: tuple(v.shape) for k, v in model.sam2_state_dict().items()}
    theirs = loaded_part(read_layout(TSV[name]))
    assert set(ours) - set(theirs) == set()
    assert set(theirs) - set(ours) == set()
    bad = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert bad == {}
    # and a state dict with exactly Meta's layout passes the strict loader's checks
    full = {k: torch.empty(s, device="meta") for k, s in read_layout(TSV[name]).items()}
    full["memory_attention.layers.0.norm1.weight"] = torch.empty(256, device="meta")  # ignored part
    assert load_state(model, {"model": full}, source=name) == "sam2"


@pytest.mark.parametrize("name", sorted(TSV))
def test_parameter_counts_match_meta(name):
    counts = json.loads((DATA / "trunk_configs.json").read_text())
    family, size = name.split("-hiera-")
    short = {"tiny": "t", "small": "s", "base-plus": "b+", "large": "l"}[size]
    key = f"{family}/{family}_hiera_{short}"
    ref = counts[key]["param_count"]
    model = meta_model(name)
    assert sum(p.numel() for p in model.image_encoder.parameters()) == ref["image_encoder"]
    assert sum(p.numel() for p in model.sam_mask_decoder.parameters()) == ref["sam_mask_decoder"]


def test_wrong_size_checkpoint_names_the_matching_config():
    model = meta_model("sam2.1-hiera-tiny")
    large = {k: torch.empty(s, device="meta") for k, s in read_layout(TSV["sam2.1-hiera-large"]).items()}
    with pytest.raises(CryopickError, match=r"does not fit sam2.1-hiera-tiny.*embed_dim 144 with 48 blocks.*"
                                            r"sam2.1-hiera-large"):
        load_state(model, {"model": large}, source="large.pt")


def test_truncated_layout_is_rejected():
    model = meta_model("sam2-hiera-small")
    layout = read_layout(TSV["sam2-hiera-small"])
    layout.pop("sam_mask_decoder.conv_s1.weight")
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    with pytest.raises(CryopickError, match="1 missing tensors, e.g. sam_mask_decoder.conv_s1.weight"):
        load_state(model, {"model": sd}, source="x.pt")


def test_strict_load_of_generated_tiny_checkpoint(tmp_path):
    """Materialise a full official-layout file for Hiera-T (the smallest) and load it for real."""
    torch.manual_seed(0)
    layout = read_layout(TSV["sam2.1-hiera-tiny"])
    sd = {k: torch.randn(s) * 0.01 for k, s in layout.items()}
    sd["no_mem_embed"] = torch.zeros(1, 1, 256)  # a non-image tensor an official file also has
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sd}, path)
    model = build_model("sam2.1-hiera-tiny", checkpoint=str(path), image_size=256)
    own = model.state_dict()
    for key in ["image_encoder.trunk.blocks.11.mlp.layers.1.weight", "sam_mask_decoder.conv_s0.weight",
                *PROMPT_KEYS]:
        assert torch.equal(own[key], sd[key])
    assert model.preferred_size == 256
    with torch.no_grad():
        assert model(torch.randn(1, 1, 256, 256)).shape == (1, 1, 256, 256)


def test_random_init_warns_loudly():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        build_model("sam2-hiera-tiny", image_size=64)


def test_not_a_sam2_checkpoint(tmp_path):
    other = tmp_path / "unet.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(3)}}, other)
    with pytest.raises(CryopickError, match="not a SAM2 checkpoint"):
        build_model("sam2-test-tiny", checkpoint=str(other))
    junk = tmp_path / "junk.pt"
    junk.write_text("<html>404 Not Found</html>")
    with pytest.raises(CryopickError, match="not a readable PyTorch checkpoint"):
        build_model("sam2-test-tiny", checkpoint=str(junk))
    with pytest.raises(CryopickError, match="does not exist"):
        build_model("sam2-test-tiny", checkpoint=str(tmp_path / "missing.pt"))


def test_cryopick_checkpoint_round_trip(tmp_path):
    """A trained CryoFSL state dict (adapters included) reloads exactly."""
    torch.manual_seed(0)
    model = build_model("sam2-test-tiny")
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "trained.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    again = build_model("sam2-test-tiny", checkpoint=str(path))
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))
    assert TEST_TINY.image_size == 128
