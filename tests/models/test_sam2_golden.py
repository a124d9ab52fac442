"""Exactness of the plain-PyTorch SAM2 image path against Meta's own modules (mini_golden.pt),
plus the CryoFSL adapter / picker behaviour that builds on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cryopick.models.sam2 import CryoFSL, SAM2Config
from cryopick.models.sam2.configs import TEST_TINY

DATA = Path(__file__).parents[1] / "data" / "sam2"
ATOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    torch.set_num_threads(1)
    return torch.load(DATA / "mini_golden.pt", weights_only=False)


def _golden_model(golden, use_adapters: bool = False) -> CryoFSL:
    cfg = SAM2Config.from_dict(golden["config"], name="mini-golden")
    model = CryoFSL(cfg, use_adapters=use_adapters).eval()
    own = model.state_dict()
    # strict for every tensor the prompt-free path has (the golden file also holds the unused
    # point/mask prompt embeddings of the prompt encoder)
    sd = {k: v for k, v in golden["model"].items() if k in own}
    result = model.load_state_dict(sd, strict=False)
    assert [k for k in result.missing_keys if not k.startswith("adapters.")] == []
    return model


def _run(model: CryoFSL, image: torch.Tensor):
    with torch.no_grad():
        backbone = model.encode(image)
        masks, iou, _, obj = model.decode(backbone)
    return backbone, masks, iou, obj


def test_golden_outputs_match_meta(golden):
    model = _golden_model(golden)
    backbone, masks, iou, obj = _run(model, golden["input"])
    ref = golden["outputs"]

    def close(name, a, b):
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item()
        assert err <= ATOL, f"{name}: max abs error {err:.2e}"

    close("vision_features", backbone["vision_features"], ref["vision_features"])
    assert len(backbone["backbone_fpn"]) == len(ref["backbone_fpn"]) == 3
    for i in range(3):
        close(f"backbone_fpn[{i}]", backbone["backbone_fpn"][i], ref["backbone_fpn"][i])
        close(f"vision_pos_enc[{i}]", backbone["vision_pos_enc"][i], ref["vision_pos_enc"][i])
    close("image_pe", model.sam_prompt_encoder.image_pe(), ref["image_pe"])
    close("low_res_masks", masks, ref["low_res_masks"])
    close("iou_predictions", iou, ref["iou_predictions"])
    close("object_score_logits", obj, ref["object_score_logits"])


def test_golden_detects_a_wrong_weight(golden):
    """The comparison is sensitive: one perturbed decoder weight breaks it."""
    model = _golden_model(golden)
    with torch.no_grad():
        model.sam_mask_decoder.output_hypernetworks_mlps[0].layers[2].weight.add_(0.01)
    _, masks, _, _ = _run(model, golden["input"])
    assert (masks - golden["outputs"]["low_res_masks"]).abs().max().item() > 1e-3


def test_adapters_start_as_identity(golden):
    """At step 0 the adapted model equals the pretrained model (shared projections are zero)."""
    plain = _golden_model(golden, use_adapters=False)
    adapted = _golden_model(golden, use_adapters=True)
    a = _run(plain, golden["input"])
    b = _run(adapted, golden["input"])
    assert torch.equal(a[0]["vision_features"], b[0]["vision_features"])
    assert torch.equal(a[1], b[1])
    # ... and the adapters are live: non-zero shared weights change the features
    with torch.no_grad():
        for lin in adapted.adapters.shared:
            lin.weight.normal_(0, 0.1)
    c = _run(adapted, golden["input"])
    assert (c[0]["vision_features"] - a[0]["vision_features"]).abs().max().item() > 1e-3


def test_adapter_layout_one_per_block():
    from cryopick.models.sam2.configs import OFFICIAL_CONFIGS

    with torch.device("meta"):
        model = CryoFSL(OFFICIAL_CONFIGS["sam2.1-hiera-large"])
    assert len(model.adapters.unshared) == len(model.image_encoder.trunk.blocks) == 48
    assert model.adapters.group_widths == [144, 288, 576, 1152]
    assert model.adapters.counts_per_group() == [3, 6, 36, 3]
    assert [model.image_encoder.trunk.block_stage.count(s) for s in range(4)] == [2, 6, 36, 4]


def test_trainable_parameters_hiera_large():
    """Trainable = adapters + mask decoder; counted for the paper's Hiera-L."""
    from cryopick.models.sam2.configs import OFFICIAL_CONFIGS

    with torch.device("meta"):
        model = CryoFSL(OFFICIAL_CONFIGS["sam2.1-hiera-large"])
    n_adapters = sum(p.numel() for p in model.adapters.parameters())
    n_decoder = sum(p.numel() for p in model.sam_mask_decoder.parameters())
    n_trainable = sum(p.numel() for p in model.trainable_parameters())
    # width 144/288/576/1152, hidden C//32 = 4/9/18/36, 3/6/36/3 adapters per width
    expected_adapters = sum(n * (c * h + h) + (h * c + c) for c, h, n in
                            [(144, 4, 3), (288, 9, 6), (576, 18, 36), (1152, 36, 3)])
    assert n_adapters == expected_adapters == 572_934
    assert n_decoder == 4_215_109
    assert n_trainable == n_adapters + n_decoder
    frozen = {id(p) for p in model.image_encoder.parameters()} | {id(p) for p in model.sam_prompt_encoder.parameters()}
    assert not frozen & {id(p) for p in model.trainable_parameters()}
    assert all(not p.requires_grad for p in model.image_encoder.parameters())


def test_gradients_reach_adapters_through_frozen_encoder():
    torch.manual_seed(0)
    model = CryoFSL(TEST_TINY).train()
    with torch.no_grad():
        for lin in model.adapters.shared:
            lin.weight.normal_(0, 0.1)
    x = torch.randn(2, 1, 128, 128)
    model(x).square().mean().backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapters.unshared.parameters())
    assert model.sam_mask_decoder.conv_s0.weight.grad.abs().sum() > 0


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    ref = CryoFSL(TEST_TINY).train()
    with torch.no_grad():
        for lin in ref.adapters.shared:
            lin.weight.normal_(0, 0.1)
    ckpt = CryoFSL(TEST_TINY, activation_checkpointing=True).train()
    ckpt.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 128, 128)
    ref(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, a), b in zip(ref.adapters.named_parameters(), ckpt.adapters.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = CryoFSL(TEST_TINY).eval()
    bf = CryoFSL(TEST_TINY, bf16=True).eval()
    bf.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        a, b = model(x), bf(x)
    assert b.dtype == torch.float32
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item() + 1e-3
    assert not torch.equal(a, b)  # it really ran in bf16


def test_picker_contract_sizes_and_input_mapping():
    torch.manual_seed(0)
    model = CryoFSL(TEST_TINY).eval()
    assert model.preferred_size == 128 and model.input_multiple == 1
    with torch.no_grad():
        for shape in [(2, 1, 128, 128), (1, 1, 100, 150), (1, 1, 300, 200)]:
            assert model(torch.randn(shape)).shape == shape
        # z in [-4, 4] maps to [0, 1] before the ImageNet normalisation
        z = torch.tensor([-10.0, -4.0, 0.0, 4.0, 10.0]).view(1, 1, 1, 5).expand(1, 1, 128, 5)
        img = model.to_sam_input(torch.nn.functional.pad(z, (0, 123)))
    v = img[0, :, 0, :5] * model.pixel_std.view(3, 1) + model.pixel_mean.view(3, 1)
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    assert torch.allclose(v, expected.expand(3, 5), atol=1e-5)
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 128, 128))


def test_non_square_input_keeps_aspect_ratio():
    """Padding (not squashing): a tall image gives the same logits on its top square as the square crop."""
    torch.manual_seed(0)
    model = CryoFSL(TEST_TINY).eval()
    x = torch.randn(1, 1, 128, 64)
    padded = torch.nn.functional.pad(x, (0, 64))
    with torch.no_grad():
        a = model(x)
        b = model(padded)[..., :64]
    assert torch.allclose(a, b, atol=1e-5)


def test_each_image_uses_its_own_high_res_features():
    """Batch items are independent (the authors' code took high-res features from the last image)."""
    torch.manual_seed(0)
    model = CryoFSL(TEST_TINY).eval()
    x = torch.randn(3, 1, 128, 128)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
    assert not torch.allclose(batch[0], batch[2], atol=1e-3)
