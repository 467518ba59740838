"""Checkpoint files: safe loading, every MTP / MAE / MMSeg layout, resizing, decoder reuse and atomic saving.

Released MTP weights come in several layouts (``mtp_spec.md`` §2.6, §5.3, §6): the pretraining encoder file, the
full multi-task pretraining model, MMSeg fine-tuned models, MAE pretraining files, the output of MTP's
``scripts/change_ckpt.py`` and plain state dicts. This module reads all of them into our models the way the original
``RVSA_MTP.init_weights`` does (bicubic resizing of ``pos_embed`` and of the full-attention relative-position tables),
and says in a :class:`LoadReport` what was loaded, resized, dropped and left missing.

Files are never unpickled with the full pickle machinery: ``torch.load(weights_only=True)`` always, with the numpy
globals needed for arrays on an allow-list and every OpenMMLab class replaced by an inert placeholder that stores
what the file says and runs nothing. Anything else a file names (``os.system``, ``builtins.eval``, ...) is refused.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import pickle
import re
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtp_core
from mtp_core.device import resolve_device
from mtp_core.io_utils import atomic_torch_save
from mtp_core.models.card import ModelCard
from mtp_core.models.registry import create_model, default_card, list_models, model_entry

__all__ = [
    "CheckpointError",
    "InertList",
    "InertObject",
    "LAYOUTS",
    "LoadReport",
    "UnsafeCheckpointError",
    "change_ckpt_rename",
    "convert_checkpoint",
    "extract_state_dict",
    "load_model",
    "load_weights",
    "resize_pos_embed",
    "resize_rel_pos",
    "safe_load",
    "save_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]
ReuseDecoder = Literal["none", "semseg", "rotdet"]
_REUSE_CHOICES = ("none", "semseg", "rotdet")
Mismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # (model key, file shape, model shape)


class CheckpointError(ValueError):
    """A checkpoint can't be used as asked; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file names a Python object whose unpickling could run code, so it was not loaded."""


# --------------------------------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------------------------------

# Classes of these packages only describe training runs (MMEngine message hubs, configs, history buffers): they are
# rebuilt as inert placeholders, never imported. ``argparse.Namespace`` holds the ``args`` of MAE checkpoints.
INERT_NAMESPACES = ("mmengine.", "mmcv.", "mmseg.", "mmdet.", "mmrotate.", "mmpretrain.", "opencd.")
INERT_GLOBALS = frozenset({"argparse.Namespace"})

# torch.save of a Python int (the legacy format's first record, ``torch.serialization.MAGIC_NUMBER``), protocol 2.
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
_MIN_TORCH_FOR_OBJECTS = "2.6"  # get_unsafe_globals_in_checkpoint (2.5) and (object, "name") safe globals (2.6)
_SAFE_GLOBALS_LOCK = threading.Lock()


class InertObject:
    """Stand-in for a class or function a checkpoint names but that is never imported or called.

    The weights-only unpickler creates it through ``__new__`` (NEWOBJ), a call (REDUCE) and ``__setstate__``
    (BUILD); all of them only store what the file holds, in ``args`` and ``state``, for inspection.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = super().__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Accept any constructor arguments and do nothing (``__new__`` kept them)."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


class InertList(list):
    """Inert stand-in for a ``list`` subclass: the unpickler only appends to allow-listed list types."""

    global_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.state = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.global_name} {list.__repr__(self)}>"


def _inert_class(name: str, base: type) -> type:
    """A placeholder class named like the global (so error messages and reprs show the original name)."""
    module, _, qualname = name.rpartition(".")
    return type(qualname, (base,), {"__module__": module, "__qualname__": qualname, "global_name": name})


@lru_cache(maxsize=1)
def _numpy_globals() -> dict[str, Any]:
    """numpy objects needed to rebuild arrays, scalars and dtypes, under the names numpy 1.x and 2.x pickle them.

    ``_reconstruct`` only builds ndarrays of an allow-listed class; ``scalar`` only builds a scalar of a given dtype.
    The concrete dtype classes (``numpy.dtypes.Float64DType`` in numpy >= 1.25) are listed because BUILD on a dtype
    checks the *instance's* type.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    names: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[f"{module}._reconstruct"] = multiarray._reconstruct
        names[f"{module}.scalar"] = multiarray.scalar
    for code in np.typecodes["All"]:
        dtype_class = type(np.dtype(code))
        names.setdefault(f"{dtype_class.__module__}.{dtype_class.__qualname__}", dtype_class)
    return names


def _is_inert_name(name: str) -> bool:
    return name.startswith(INERT_NAMESPACES) or name in INERT_GLOBALS


def _describe_non_checkpoint(head: bytes) -> str:
    """What a file that is not a PyTorch checkpoint looks like, so the user knows what they downloaded."""
    if not head:
        return "the file is empty (0 bytes): an interrupted download? Download it again"
    if head.startswith(b"\x89PNG"):
        return "it is a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "it is a JPEG image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "it is a TIFF image"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "it is an HTML page (a download link's web page saved instead of the file?)"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "it looks like a safetensors file, which this loader does not read"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its content is not a known checkpoint format"
    return "it is a text file"


def _checkpoint_format(path: Path) -> Literal["zip", "legacy"]:
    """``zip`` (torch >= 1.6) or ``legacy``; a clear error for missing, empty, truncated or foreign files."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if not head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_describe_non_checkpoint(head)}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({exc}; {path.stat().st_size:,} bytes): download it again"
        ) from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointError(f"{path} is a TorchScript archive, not a checkpoint of weights: it is not supported")
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl)")
    return "zip"


def _torch_allows_objects() -> bool:
    has_scan = hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    return has_scan and torch.__version__ >= _MIN_TORCH_FOR_OBJECTS  # TorchVersion compares as a version


def _old_torch_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} holds Python objects besides tensors (numpy arrays or MMEngine metadata); loading them safely "
        f"needs torch >= {_MIN_TORCH_FOR_OBJECTS} (found {torch.__version__}): upgrade torch"
    )


def _safe_globals_for(path: Path) -> dict[str, Any]:
    """Name -> object for every global of ``path`` that torch does not allow by default; refuses unknown ones."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # a broken pickle stream: torch raises assorted types
        raise _corrupt_error(path, exc) from None
    numpy_names = _numpy_globals()
    refused = sorted(n for n in needed if n not in numpy_names and not _is_inert_name(n))
    if refused:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it names {', '.join(refused)}, which unpickling would import and call — a "
            "file can run code this way, so it was not loaded. Checkpoints of weights hold tensors, numpy arrays and "
            "training metadata only; get the file from its original source"
        )
    mapping = dict(numpy_names)
    mapping.update({n: _inert_class(n, InertObject) for n in needed if _is_inert_name(n)})
    return mapping


def _container_stand_in(message: str, mapping: dict[str, Any]) -> str | None:
    """The placeholder a failed load tried to fill like a dict or list (dict/list subclasses such as ``ConfigDict``).

    torch only runs SETITEMS on exact ``dict``/``OrderedDict`` and APPENDS on allow-listed list types, so those
    placeholders are swapped for an ``OrderedDict`` / an :class:`InertList` and the load is retried.
    """
    for name, obj in mapping.items():
        if isinstance(obj, type) and issubclass(obj, InertObject) and str(obj) in message:
            return name
    return None


def _weights_only_reason(exc: Exception) -> str:
    """torch's own reason, without its advice to retry with ``weights_only=False`` (which would run the file)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _corrupt_error(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is truncated or corrupt ({type(exc).__name__}: {_weights_only_reason(exc)}): download it again"
    )


def _torch_load(path: Path, mapping: dict[str, Any]) -> Any:
    # safe_globals edits one process-wide set: a concurrent load leaving its context would remove our entries.
    with _SAFE_GLOBALS_LOCK, torch.serialization.safe_globals([(obj, name) for name, obj in mapping.items()]):
        return torch.load(path, map_location="cpu", weights_only=True)


def safe_load(path: PathLike) -> Any:
    """Load a checkpoint file without running code from it.

    Released MTP files hold a numpy array and MMEngine files hold MMEngine objects, which plain
    ``torch.load(weights_only=True)`` refuses: numpy array globals are allowed by exact name and OpenMMLab classes
    become :class:`InertObject` placeholders (dict subclasses become ``OrderedDict``). Every other global is refused
    with :class:`UnsafeCheckpointError`; missing, foreign, truncated or corrupt files raise :class:`CheckpointError`.
    """
    path = Path(path)
    fmt = _checkpoint_format(path)
    if fmt == "legacy":
        return _load_legacy(path)
    mapping = _safe_globals_for(path) if _torch_allows_objects() else {}
    while True:  # each retry swaps one placeholder for a container, so this ends
        try:
            return _torch_load(path, mapping)
        except pickle.UnpicklingError as exc:
            name = _container_stand_in(str(exc), mapping)
            if name is None:
                if not _torch_allows_objects():
                    raise _old_torch_error(path) from None
                raise CheckpointError(f"{path} could not be loaded safely: {_weights_only_reason(exc)}") from None
            mapping[name] = OrderedDict if "SETITEM" in str(exc) else _inert_class(name, InertList)
        except Exception as exc:  # the zip reader and the unpickler raise assorted types on damaged data
            raise _corrupt_error(path, exc) from None


def _load_legacy(path: Path) -> Any:
    """Pre-1.6 files: tensors and plain containers only (no global scan exists for this format)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is in PyTorch's legacy (pre-1.6) format and holds objects besides tensors "
            f"({_weights_only_reason(exc)}); unpickling them could run code, so it was not loaded. Re-save its "
            "tensors with a current PyTorch in an environment you trust"
        ) from None
    except Exception as exc:
        raise _corrupt_error(path, exc) from None


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------

LAYOUTS: dict[str, str] = {
    "mtp_core": "mtp_core checkpoint (state_dict + model card)",
    "mmseg": "MMSeg/MMEngine fine-tuned segmentor (backbone.* + decode_head.*)",
    "mtp_pretrain": "full MTP multi-task pretraining model (encoder.* + semsegdecoder/insseg/rotdet decoders)",
    "change_ckpt": "output of MTP's scripts/change_ckpt.py (backbone.* with the pretraining decoders)",
    "backbone_prefixed": "backbone.* checkpoint without a segmentation head (MMDet/MMRotate/MMPretrain)",
    "mtp_encoder": "MTP pretraining encoder (*_pretrn_model_encoder.pth: no prefix, with norm.*)",
    "mae": "MAE pretraining (cls_token, mask_token, decoder_*)",
    "backbone": "bare RVSA backbone state dict (no prefix)",
}
_PRETRAIN_DECODER_MARKS = ("semsegdecoder.", "semseghead_", "insseg", "rotdetroiboxhead", "rotdetdecoder.")
_SEMSEG_PREFIX = "semsegdecoder.decode_head."
_HEAD_NAMES = ("decode_head", "auxiliary_head")
_HEAD_PREFIXES = tuple(f"{h}." for h in _HEAD_NAMES)
# Backbone-namespace keys a target without them can't use: the pretraining/MAE final norm, MAE's cls/mask tokens and
# decoder, a classification head.
_BACKBONE_EXTRAS = ("norm.", "cls_token", "mask_token", "decoder_", "fc_norm.", "head.")
_REL_POS_SUFFIXES = ("full_attn_rel_pos_h", "full_attn_rel_pos_w")
_PATCH_SIZE = 16  # every MTP model (RVSAViT supports no other)


def _card_dict(obj: Any) -> dict[str, Any] | None:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    card = meta.get("model_card") if isinstance(meta, Mapping) else None
    return dict(card) if isinstance(card, Mapping) else None


def _weights_of(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict of weights, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    if any(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"no weights found: the checkpoint has no 'state_dict' or 'model' entry holding tensors "
        f"(top-level keys: {', '.join(map(str, list(obj)[:10]))})"
    )


def _classify(keys: list[str], has_card: bool) -> str:
    if has_card:
        return "mtp_core"
    if any(k.startswith("encoder.") for k in keys):
        return "mtp_pretrain"
    if any(k.startswith("backbone.") for k in keys):
        if any(k.startswith(_PRETRAIN_DECODER_MARKS) for k in keys):
            return "change_ckpt"
        return "mmseg" if any(k.startswith("decode_head.") for k in keys) else "backbone_prefixed"
    if any(k.startswith(("cls_token", "mask_token", "decoder_")) for k in keys):
        return "mae"
    return "mtp_encoder" if "norm.weight" in keys and any(k.startswith("fpn1.") for k in keys) else "backbone"


def extract_state_dict(obj: Any) -> tuple[dict[str, Tensor], str]:
    """The tensors of a loaded checkpoint and its layout name (a key of :data:`LAYOUTS`).

    Takes ``obj['state_dict']`` (MTP, MMEngine, change_ckpt.py, ours), else ``obj['model']`` (MAE), else ``obj``
    itself, as the original ``init_weights`` does, and strips a DataParallel ``module.`` prefix.
    """
    weights = _weights_of(obj)
    state = {str(k): v for k, v in weights.items() if isinstance(v, Tensor)}
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, _classify(list(state), _card_dict(obj) is not None)


@dataclass
class _Parts:
    """Source keys sorted by what they are for; each dict maps a key relative to its module -> the source key."""

    backbone: dict[str, str] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)  # "decode_head.*" / "auxiliary_head.*"
    semseg_decoder: dict[str, str] = field(default_factory=dict)  # MTP's pretrained UperNet, relative to the head
    unused: list[str] = field(default_factory=list)  # detection decoders, dataset classifiers, ...


def _split(state: Mapping[str, Tensor], layout: str) -> _Parts:
    parts = _Parts()
    for key in state:
        if key.startswith(_SEMSEG_PREFIX):
            parts.semseg_decoder[key.removeprefix(_SEMSEG_PREFIX)] = key
        elif layout == "mtp_pretrain":
            # The original strips 'encoder.' from every key when the first sorted key starts with 'encoder'.
            if key.startswith("encoder."):
                parts.backbone[key.removeprefix("encoder.")] = key
            else:
                parts.unused.append(key)
        elif layout in ("mtp_encoder", "mae", "backbone"):
            parts.backbone[key] = key
        elif key.startswith("backbone."):
            parts.backbone[key.removeprefix("backbone.")] = key
        elif key.startswith(_HEAD_PREFIXES):
            parts.heads[key] = key
        else:
            parts.unused.append(key)
    return parts


def _backbone_dims(state: Mapping[str, Tensor], backbone: Mapping[str, str]) -> tuple[int, int] | None:
    """(embed_dim, depth) of the source backbone: the patch-embedding width and the number of blocks."""
    proj = backbone.get("patch_embed.proj.weight")
    blocks = [int(m.group(1)) for k in backbone if (m := re.match(r"blocks\.(\d+)\.", k))]
    if proj is None or not blocks:
        return None
    return int(state[proj].shape[0]), max(blocks) + 1


@lru_cache(maxsize=None)
def _segmentor_dims(name: str) -> tuple[int, int]:
    """(embed_dim, depth) of a registered segmentor's backbone, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = create_model(name)
    return model.backbone.embed_dim, len(model.backbone.blocks)


def _preset_segmentors() -> list[str]:
    """Segmentors configured by ``num_classes``/``decode_channels``/backbone overrides (not the fully specified one,
    which needs the dicts of a model card)."""
    names = list_models("segmentor")
    return [n for n in names if "num_classes" in inspect.signature(model_entry(n).builder).parameters]


def _segmentor_for(dims: tuple[int, int] | None) -> str | None:
    """The preset segmentor whose backbone has these (embed_dim, depth), if any."""
    return next((n for n in _preset_segmentors() if dims is not None and _segmentor_dims(n) == dims), None)


def _describe_dims(dims: tuple[int, int] | None) -> str:
    if dims is None:
        return "no RVSA ViT backbone (no patch_embed.proj.weight / blocks.* keys)"
    name = _segmentor_for(dims)
    size = {768: "ViT-B", 1024: "ViT-L"}.get(dims[0], "ViT")
    known = f": build {name}, or let load_model() pick the architecture" if name else ""
    return f"a {size} backbone (embed_dim {dims[0]}, {dims[1]} blocks){known}"


# --------------------------------------------------------------------------------------------------------------------
# Resizing (RVSA_MTP.init_weights)
# --------------------------------------------------------------------------------------------------------------------


def resize_pos_embed(pos_embed: Tensor, num_tokens: int, num_extra_tokens: int = 0) -> Tensor:
    """``(1, extra + g*g, C)`` -> ``(1, num_tokens, C)``, as the original loader.

    Leading extra (cls) tokens are dropped: the RVSA backbone has none. The g x g grid is resized with bicubic
    interpolation (``align_corners=False``) when its size differs, so a 224-px (or MAE) checkpoint serves 384-px
    fine-tuning.
    """
    src_tokens = pos_embed.shape[1] - num_extra_tokens
    src_grid, dst_grid = math.isqrt(src_tokens), math.isqrt(num_tokens)
    if src_grid * src_grid != src_tokens or dst_grid * dst_grid != num_tokens:
        raise CheckpointError(
            f"pos_embed {tuple(pos_embed.shape)} (with {num_extra_tokens} extra token(s)) can't be resized to "
            f"{num_tokens} tokens: both must be square grids"
        )
    tokens = pos_embed[:, num_extra_tokens:]
    if src_grid == dst_grid:
        return tokens.clone()
    grid = tokens.reshape(-1, src_grid, src_grid, tokens.shape[-1]).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(dst_grid, dst_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos_embed.dtype)


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """A full-attention relative-position table ``(2S-1, d)`` -> ``(length, d)``, as the original loader.

    It is bicubic-resized as a ``(1, 1, L, d)`` image to ``(length, d)`` (``align_corners=False``): a 1-D resize
    along L, the identity along d.
    """
    rows, dim = table.shape
    image = table.float().reshape(1, 1, rows, dim)
    out = F.interpolate(image, size=(length, dim), mode="bicubic", align_corners=False)
    return out.reshape(length, dim).to(table.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What loading a checkpoint did: printed by the CLI, logged by the trainer, checked by tests.

    ``loaded``, ``missing`` and ``reinitialized`` use the model's key names; ``dropped`` (keys in the file the model
    can't use: unexpected by design, e.g. the pretraining norm or detection decoders) uses the file's key names.
    """

    layout: str
    source: str
    loaded: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Several human-readable lines."""
        lines = [f"checkpoint: {self.source}", f"layout: {self.layout} — {LAYOUTS.get(self.layout, self.layout)}"]
        lines.append(f"loaded: {len(self.loaded)} tensors")
        if self.resized:
            lines.append("resized: " + "; ".join(f"{k} {tuple(a)} -> {tuple(b)}" for k, a, b in self.resized))
        if self.reinitialized:
            lines.append(f"reinitialized: {_compact(self.reinitialized)}")
        if self.missing:
            lines.append(f"missing (left as initialized): {len(self.missing)} tensors: {_compact(self.missing)}")
        if self.dropped:
            lines.append(f"dropped (not used by this model): {len(self.dropped)} tensors: {_compact(self.dropped)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def log(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        for line in self.summary().splitlines():
            logger.log(level, line)


def _compact(keys: list[str], limit: int = 8) -> str:
    """Keys grouped by pattern (indices as ``*``), shortened to module prefixes until at most ``limit`` groups are
    left, so the 74 keys of a decode head fit on one line (the full lists stay in the report)."""
    patterns = [re.sub(r"(?<=\.)\d+(?=\.|$)", "*", k).split(".") for k in keys]
    depth = max((len(p) for p in patterns), default=1)
    while depth > 1 and len({tuple(p[:depth]) for p in patterns}) > limit:
        depth -= 1
    counts = Counter(".".join(p[:depth]) + (".*" if len(p) > depth else "") for p in patterns)
    shown = [f"{p} (x{n})" if n > 1 else p for p, n in list(counts.items())[:limit]]
    if len(counts) > limit:
        shown.append(f"... {len(counts) - limit} more")
    return ", ".join(shown)


def _is_segmentor(model: nn.Module) -> bool:
    return isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
        getattr(model, "decode_head", None), nn.Module
    )


def _classifier_keys(target: Mapping[str, Tensor]) -> list[str]:
    return [k for k in target if k.startswith(tuple(f"{h}.conv_seg." for h in _HEAD_NAMES))]


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _architecture_error(
    source: str,
    mismatched: list[Mismatch],
    unexpected: list[str],
    dims: tuple[int, int] | None,
    head_channels: int | None,
    model: nn.Module,
) -> CheckpointError:
    examples = [f"{k}: file {a} vs model {b}" for k, a, b in mismatched[:4]]
    examples += [f"{k}: not in the model" for k in unexpected[: max(0, 6 - len(examples))]]
    hint = f" The file holds {_describe_dims(dims)}."
    decode = getattr(model, "decode_head", None)
    if head_channels is not None and decode is not None and head_channels != decode.channels:
        hint += (
            f" Its decode head has {head_channels} channels (the model {decode.channels}): "
            f"build with decode_channels={head_channels}."
        )
    return CheckpointError(
        f"{source} holds weights of another architecture than this model ({len(mismatched)} tensors differ in shape, "
        f"{len(unexpected)} are not in the model). First differences: {'; '.join(examples)}.{hint}"
    )


def _class_count_error(
    source: str, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
) -> CheckpointError:
    return CheckpointError(
        f"{source}: {key} is trained for {file_shape[0]} classes but the model has {model_shape[0]}. To start a new "
        f"classifier for {model_shape[0]} classes from these weights pass reinit_classifier=True (CLI: --num-classes "
        f"{model_shape[0]}); to use the trained one build the model with num_classes={file_shape[0]}"
    )


def _head_channels(state: Mapping[str, Tensor]) -> int | None:
    weight = state.get("decode_head.conv_seg.weight")
    return int(weight.shape[1]) if weight is not None else None


def _plan_keys(
    parts: _Parts, target: Mapping[str, Tensor], segmentor: bool, report: LoadReport
) -> tuple[dict[str, str], list[str]]:
    """Model key -> file key for the backbone and heads; file keys the model lacks go to ``dropped`` when a rule
    says the model can't use them (pretraining norm, MAE extras, training-only auxiliary head), else to unexpected."""
    prefix = "backbone." if segmentor else ""
    plan: dict[str, str] = {}
    unexpected: list[str] = []
    for rel, key in parts.backbone.items():
        if prefix + rel in target:
            plan[prefix + rel] = key
        elif rel.startswith(_BACKBONE_EXTRAS):
            report.dropped.append(key)
        else:
            unexpected.append(key)
    for key in parts.heads:
        if not segmentor or (key.startswith("auxiliary_head.") and key not in target):
            report.dropped.append(key)
        elif key in target:
            plan[key] = key
        else:
            unexpected.append(key)
    return plan, unexpected


def _fit_shapes(
    plan: dict[str, str],
    state: Mapping[str, Tensor],
    target: Mapping[str, Tensor],
    pos_key: str,
    num_extra: int,
    report: LoadReport,
) -> tuple[dict[str, Tensor], list[Mismatch], list[Mismatch]]:
    """Tensors to load (``pos_embed`` and full-attention rel-pos tables resized), other shape mismatches, and
    classifier mismatches (same input channels, another class count)."""
    classifiers = set(_classifier_keys(target))
    tensors: dict[str, Tensor] = {}
    mismatched: list[Mismatch] = []
    class_mismatch: list[Mismatch] = []
    for tkey, skey in plan.items():
        value, want = state[skey], _shape(target[tkey])
        have = _shape(value)
        if tkey == pos_key and (have != want or num_extra) and len(have) == 3 and have[-1] == want[-1]:
            value = resize_pos_embed(value, want[1], num_extra)
        elif tkey.endswith(_REL_POS_SUFFIXES) and have != want and have[1:] == want[1:]:
            value = resize_rel_pos(value, want[0])
        if _shape(value) != want:
            is_classifier = tkey in classifiers and have[1:] == want[1:]
            (class_mismatch if is_classifier else mismatched).append((tkey, have, want))
            continue
        if _shape(value) != have:
            report.resized.append((tkey, have, want))
        tensors[tkey] = value
    return tensors, mismatched, class_mismatch


def _load_into(
    model: nn.Module, obj: Any, source: str, reuse_decoder: str, reinit_classifier: bool
) -> LoadReport:
    if reuse_decoder not in _REUSE_CHOICES:
        raise ValueError(f"reuse_decoder must be one of {', '.join(_REUSE_CHOICES)}, got {reuse_decoder!r}")
    if reuse_decoder == "rotdet":
        raise CheckpointError(
            "reuse_decoder='rotdet' renames the keys for MMRotate's Oriented R-CNN (as MTP's change_ckpt.py); our "
            "models have no rotated-detection head. Use convert_checkpoint(src, dst, reuse_decoder='rotdet')"
        )
    state, layout = extract_state_dict(obj)
    parts = _split(state, layout)
    target = model.state_dict()
    segmentor = _is_segmentor(model)
    report = LoadReport(layout=layout, source=source)
    plan, unexpected = _plan_keys(parts, target, segmentor, report)
    new_heads = {h for h in _HEAD_NAMES if f"{h}.conv_seg.weight" in target} if reinit_classifier else set()
    if reuse_decoder == "semseg":
        _plan_semseg_decoder(model, state, parts, target, plan, unexpected, report)
        new_heads.add("decode_head")
    else:
        report.dropped.extend(parts.semseg_decoder.values())
        if parts.semseg_decoder and segmentor:
            report.notes.append("the file has MTP's pretrained UperNet: reuse_decoder='semseg' loads it")
    report.dropped.extend(parts.unused)
    fresh = [k for k in _classifier_keys(target) if k.split(".", 1)[0] in new_heads]
    report.dropped.extend(plan.pop(k) for k in fresh if k in plan)

    pos_key = ("backbone." if segmentor else "") + "pos_embed"
    num_extra = 1 if "cls_token" in parts.backbone else 0
    tensors, mismatched, class_mismatch = _fit_shapes(plan, state, target, pos_key, num_extra, report)
    if mismatched or unexpected:
        dims = _backbone_dims(state, parts.backbone)
        raise _architecture_error(source, mismatched, unexpected, dims, _head_channels(state), model)
    if class_mismatch:
        raise _class_count_error(source, *class_mismatch[0])
    if not tensors:
        raise CheckpointError(
            f"nothing in {source} fits this model (a {LAYOUTS[layout]} file; all {len(state)} tensors were dropped)"
        )

    for name in (h for h in _HEAD_NAMES if h in new_heads):
        head = getattr(model, name)
        head.reset_classifier(head.num_classes)
    model.load_state_dict(tensors, strict=False)
    report.loaded = list(tensors)
    report.reinitialized = fresh
    report.missing = [k for k in target if k not in tensors and k not in fresh]
    return report


def _plan_semseg_decoder(
    model: nn.Module,
    state: Mapping[str, Tensor],
    parts: _Parts,
    target: Mapping[str, Tensor],
    plan: dict[str, str],
    unexpected: list[str],
    report: LoadReport,
) -> None:
    """MTP's pretrained UperNet (``semsegdecoder.decode_head.*``) -> ``decode_head.*``, except its unused conv_seg."""
    if not _is_segmentor(model):
        raise CheckpointError(
            "reuse_decoder='semseg' loads a decode head: the target must be a segmentor, not a bare backbone"
        )
    if not parts.semseg_decoder:
        raise CheckpointError(
            "reuse_decoder='semseg' needs MTP's pretrained UperNet (semsegdecoder.decode_head.*), which only the full "
            "pretraining file (*_pretrn_model.pth, or its change_ckpt.py output) holds; this file has none"
        )
    channels = int(state[parts.semseg_decoder["conv_seg.weight"]].shape[1])
    if model.decode_head.channels != channels:
        raise CheckpointError(
            f"the pretrained UperNet has {channels} channels but the model's decode head has "
            f"{model.decode_head.channels}: build the segmentor with decode_channels={channels} to reuse it"
        )
    for rel, key in parts.semseg_decoder.items():
        if "decode_head." + rel in target:
            plan["decode_head." + rel] = key
        else:
            unexpected.append(key)
    report.notes.append(
        "decode_head from MTP's pretrained UperNet; its classifier was unused in pretraining, so conv_seg is new"
    )


def load_weights(
    model: nn.Module,
    source: PathLike | Mapping[str, Any],
    *,
    reuse_decoder: ReuseDecoder = "none",
    reinit_classifier: bool = False,
) -> LoadReport:
    """Load any supported checkpoint (a path or an already loaded object) into a backbone or a segmentor.

    Keys are mapped from the file's layout, ``pos_embed`` and the full-attention relative-position tables are resized
    as the original ``init_weights`` does, and what the model can't use is dropped and reported. Shapes are strict:
    anything else that does not fit raises :class:`CheckpointError` naming the keys (another architecture, another
    number of classes — ``reinit_classifier=True`` starts a new classifier instead of loading it).
    ``reuse_decoder='semseg'`` also loads MTP's pretrained UperNet into ``decode_head`` (256 channels).
    """
    if isinstance(source, Mapping):
        return _load_into(model, source, "<checkpoint object>", reuse_decoder, reinit_classifier)
    return _load_into(model, safe_load(source), str(source), reuse_decoder, reinit_classifier)


# --------------------------------------------------------------------------------------------------------------------
# Saving, whole models, conversion
# --------------------------------------------------------------------------------------------------------------------

_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)


def _check_plain(value: Any, where: str) -> None:
    """Meta must load with ``weights_only=True`` anywhere: only plain Python values and tensors."""
    if type(value) in _PLAIN_TYPES or isinstance(value, Tensor):  # exact types: np.float64 or TorchVersion are not
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}: checkpoint metadata must be plain "
        "Python values (None, bool, int, float, str, bytes, list, tuple, dict) or tensors, so it loads safely"
    )


def save_checkpoint(path: PathLike, model: nn.Module, card: ModelCard, **extra_meta: Any) -> None:
    """Write ``{"state_dict", "meta": {"model_card", "mtp_core_version", ...}}`` atomically.

    The card travels with the weights, so :func:`load_model` rebuilds the exact network and its data conventions.
    Everything in the file loads with ``torch.load(weights_only=True)`` (metadata must be plain values).
    """
    if not _is_segmentor(model):
        raise ValueError("save_checkpoint writes segmentors (their card describes one); save a backbone inside one")
    if model.decode_head.num_classes != card.num_classes:
        raise ValueError(
            f"the card lists {card.num_classes} classes but the model predicts {model.decode_head.num_classes}"
        )
    meta = {
        "model_card": card.to_dict(),
        "mtp_core_version": mtp_core.__version__,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass that weights_only refuses
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra_meta,
    }
    _check_plain(meta, "meta")
    state = OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items())
    atomic_torch_save({"state_dict": state, "meta": meta}, path)


def _file_classes(state: Mapping[str, Tensor]) -> int | None:
    weight = state.get("decode_head.conv_seg.weight")
    return int(weight.shape[0]) if weight is not None else None


def _with_classes(name: str, args: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """arch_args that build ``name`` for another class count: presets take ``num_classes``, the fully specified
    segmentor has it inside its head dicts."""
    params = inspect.signature(model_entry(name).builder).parameters
    if "num_classes" in params:
        return {**args, "num_classes": num_classes}
    if "decode_head" not in params:
        raise CheckpointError(f"{name} has no decode head whose number of classes could be changed")
    out = {**args, "decode_head": {**(args.get("decode_head") or {}), "num_classes": num_classes}}
    if args.get("auxiliary_head"):
        out["auxiliary_head"] = {**args["auxiliary_head"], "num_classes": num_classes}
    return out


def _target_for(
    state: Mapping[str, Tensor],
    layout: str,
    card_data: dict[str, Any] | None,
    architecture: str | None,
    num_classes: int | None,
    semseg: bool,
) -> tuple[str, dict[str, Any], ModelCard]:
    """Which segmentor to build for a file, with which arguments, and its model card.

    Our files carry the card. Released files have none: the backbone size comes from the weights (embed_dim from
    ``patch_embed.proj.weight``, depth from the number of blocks), classes and head width from
    ``decode_head.conv_seg``, and a fine-tuned model's crop size from its ``pos_embed``.
    """
    if card_data is not None:
        card = ModelCard.from_dict(card_data)
        if architecture is not None and architecture != card.architecture:
            raise CheckpointError(f"the checkpoint was saved for {card.architecture}, not {architecture}")
        args = dict(card.arch_args)
        if num_classes is not None and num_classes != card.num_classes:
            args = _with_classes(card.architecture, args, num_classes)
            classes = default_card(card.architecture, num_classes=num_classes).classes
            card = card.replace(arch_args=args, classes=classes)
        return card.architecture, args, card

    parts = _split(state, layout)
    if architecture is None:
        dims = _backbone_dims(state, parts.backbone)
        architecture = _segmentor_for(dims)
        if architecture is None:
            raise CheckpointError(
                f"cannot tell the architecture of this {LAYOUTS[layout]} file: it holds {_describe_dims(dims)}; "
                f"pass one of {', '.join(_preset_segmentors())} (CLI: --arch)"
            )
    elif model_entry(architecture).kind != "segmentor":
        raise CheckpointError(
            f"{architecture} is a backbone; load_model builds segmentors ({', '.join(_preset_segmentors())}). "
            "For a bare backbone use create_model() and load_weights()"
        )
    elif architecture not in _preset_segmentors():
        raise CheckpointError(
            f"{architecture} needs its full arguments, which only our checkpoints' model cards hold; for this file "
            f"pick one of {', '.join(_preset_segmentors())}"
        )
    file_classes = _file_classes(state)
    args: dict[str, Any] = {"num_classes": num_classes if num_classes is not None else file_classes or 2}
    semseg_seg = parts.semseg_decoder.get("conv_seg.weight") if semseg else None
    channels = int(state[semseg_seg].shape[1]) if semseg_seg else _head_channels(state)
    if channels is not None:
        args["decode_channels"] = channels
    pos = parts.backbone.get("pos_embed")
    if parts.heads and pos is not None:  # a fine-tuned model ran at its crop size (LoveDA: 512), keep it
        grid = math.isqrt(state[pos].shape[1])
        if grid * grid == state[pos].shape[1]:
            args["img_size"] = grid * _PATCH_SIZE
    card = default_card(architecture, **args)
    if "img_size" in args:
        card = card.replace(tile=args["img_size"])
    return architecture, args, card


def load_model(
    path: PathLike,
    *,
    architecture: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard, LoadReport]:
    """Build the right segmentor for a checkpoint file and load it: ``(model in eval mode, card, report)``.

    Our files carry their model card; for released MTP/MMSeg/MAE files the architecture is inferred from the weights
    (or given by name) and the card is the named config's default. ``num_classes`` different from the file's
    starts a new classifier.
    """
    obj = safe_load(path)
    state, layout = extract_state_dict(obj)
    name, args, card = _target_for(state, layout, _card_dict(obj), architecture, num_classes, semseg=False)
    model = create_model(name, **args)
    reinit = num_classes is not None and _file_classes(state) not in (None, num_classes)
    report = _load_into(model, obj, str(path), "none", reinit)
    target = resolve_device(device) if isinstance(device, str) else device
    return model.to(target).eval(), card, report


def change_ckpt_rename(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The key renaming of MTP's ``scripts/change_ckpt.py``, exactly: every 'encoder' -> 'backbone', otherwise
    'rotdetdecoder.' removed, other keys unchanged (values untouched). MMRotate's Oriented R-CNN then finds its
    ``backbone``/``neck``/``rpn_head``/``roi_head`` weights."""
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        if "encoder" in key:
            renamed[key.replace("encoder", "backbone")] = value
        elif "rotdetdecoder" in key:
            renamed[key.replace("rotdetdecoder.", "")] = value
        else:
            renamed[key] = value
    return renamed


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    *,
    reuse_decoder: ReuseDecoder = "none",
    architecture: str | None = None,
    num_classes: int | None = None,
) -> LoadReport:
    """Turn a released checkpoint into one our tools (or MMRotate) load directly; the output is written atomically.

    ``none``/``semseg``: a complete fine-tuning checkpoint in our format (weights + model card) for the inferred or
    given segmentor — a released encoder gets its ``pos_embed``/rel-pos tables resized and (``semseg``) the
    pretrained 256-channel UperNet as decode head. ``rotdet``: ``{"state_dict": ...}`` renamed as MTP's
    ``change_ckpt.py`` does, for MMRotate.
    """
    if reuse_decoder not in _REUSE_CHOICES:
        raise ValueError(f"reuse_decoder must be one of {', '.join(_REUSE_CHOICES)}, got {reuse_decoder!r}")
    obj = safe_load(src)
    state, layout = extract_state_dict(obj)
    if reuse_decoder == "rotdet":
        return _convert_rotdet(state, layout, src, dst, architecture, num_classes)
    name, args, card = _target_for(
        state, layout, _card_dict(obj), architecture, num_classes, semseg=reuse_decoder == "semseg"
    )
    model = create_model(name, **args)
    reinit = num_classes is not None and _file_classes(state) not in (None, num_classes)
    report = _load_into(model, obj, str(src), reuse_decoder, reinit)
    save_checkpoint(
        dst, model, card, converted_from=Path(src).name, source_layout=layout, reuse_decoder=reuse_decoder
    )
    return report


def _convert_rotdet(
    state: Mapping[str, Tensor],
    layout: str,
    src: PathLike,
    dst: PathLike,
    architecture: str | None,
    num_classes: int | None,
) -> LoadReport:
    if architecture is not None or num_classes is not None:
        raise CheckpointError("reuse_decoder='rotdet' only renames keys for MMRotate: --arch/--num-classes don't apply")
    if not any("rotdetdecoder" in k for k in state):
        raise CheckpointError(
            "reuse_decoder='rotdet' needs the full MTP pretraining file (*_pretrn_model.pth) with its "
            f"rotated-detection decoder (rotdetdecoder.*); {src} is a {LAYOUTS[layout]} file without one"
        )
    renamed = change_ckpt_rename(state)
    atomic_torch_save({"state_dict": renamed}, dst)
    return LoadReport(
        layout=layout,
        source=str(src),
        loaded=list(renamed),
        notes=["keys renamed as MTP's scripts/change_ckpt.py does (encoder -> backbone, rotdetdecoder. removed)"],
    )
