"""The multi-task framework's state_dict against the original's (``mtp_pretrain_decoder_keys.json`` and the encoder and
UperNet manifests of ``shared/reference/mtp``): key for key, shape for shape, in order."""
from __future__ import annotations

import json

import pytest
import torch

from mtp_core.models import create_model
from mtp_core.models.multitask import SAMRS_DATASETS, MultiTaskModel
from tests.conftest import shared_file


def manifest(*parts: str) -> dict:
    return json.loads(shared_file("reference", *parts).read_text())


def entries(items: list[dict], prefix: str = "") -> list[tuple[str, list[int]]]:
    return [(prefix + e["key"], e["shape"]) for e in items]


@pytest.fixture(scope="module")
def decoders() -> dict:
    return manifest("mtp_pretrain", "mtp_pretrain_decoder_keys.json")


@pytest.mark.parametrize(
    ("name", "encoder_manifest", "size", "channels"),
    [
        ("mtp_vit_b_rvsa_multitask", "mtp_encoder_ckpt_vitb224_keys.json", "vitb", 768),
        ("mtp_vit_l_rvsa_multitask", "mtp_encoder_ckpt_vitl448_keys.json", "vitl", 1024),
    ],
)
def test_released_framework_state_dict(decoders: dict, name: str, encoder_manifest: str, size: str, channels: int):
    with torch.device("meta"):  # shapes and order only
        model = create_model(name)
    assert isinstance(model, MultiTaskModel) and model.tasks == ("ss", "is")
    assert [(d.name, d.num_classes) for d in model.datasets] == [("sota", 18), ("sior", 20), ("fast", 37)]
    want = entries(manifest("mtp", encoder_manifest)["state_dict"], "encoder.")
    want += entries(manifest("mtp", "upernet_keys_spacenetv1.json")[f"mtp_pretrain_semseg_{size}"]["state_dict"])
    want += entries(decoders[f"inssegdecoder_{size}_C{channels}"])
    want += entries(decoders["insseg_heads"])
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == want
    if size == "vitb":
        n_params = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("inssegdecoder."))
        assert n_params == decoders["param_counts"]["inssegdecoder_C768"]


def test_top_level_order_is_the_released_files(decoders: dict) -> None:
    """Prefixes in state_dict order equal the released file's, up to the rotated decoder that is not built yet."""
    with torch.device("meta"):
        model = create_model("mtp_vit_b_rvsa_multitask")
    groups = []
    for key in model.state_dict():
        head = key.split(".")[0]
        group = "encoder.*" if head == "encoder" else f"{head}.*"
        if group not in groups:
            groups.append(group)
    released = [g for g in decoders["full_checkpoint_top_level_order"] if not g.startswith("rotdet")]
    expand = []
    for pattern in released:
        if "{1,2,3}" in pattern:
            expand += [pattern.replace("{1,2,3}", str(k)) for k in (1, 2, 3)]
        elif pattern.startswith("semseghead_"):
            expand.append(pattern.replace(".1.*", ".*"))
        else:
            expand.append(pattern.split(".")[0] + ".*")
    assert groups == expand


def test_semantic_only_framework_is_a_prefix_of_the_full_one() -> None:
    """``--tasks ss``: the same keys as the released file minus the instance decoder and its heads."""
    with torch.device("meta"):
        full = create_model("mtp_vit_b_rvsa_multitask")
        ss = create_model("mtp_vit_b_rvsa_multitask", tasks=["ss"])
    full_keys = [k for k in full.state_dict() if not k.startswith("insseg")]
    assert list(ss.state_dict()) == full_keys
    assert [d.num_classes for d in SAMRS_DATASETS] == [18, 20, 37]
