"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` always, never the full pickle machinery.

The numpy globals needed for arrays are on an allow-list and every OpenMMLab class is replaced by an inert
placeholder that stores what the file says and runs nothing. Anything else a file names (``os.system``,
``builtins.eval``, ...) is refused with :class:`UnsafeCheckpointError`.
"""
from __future__ import annotations

import os
import pickle
import threading
import zipfile
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from mtp_core.errors import UserError

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(UserError):
    """A checkpoint can't be used as asked; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The file names a Python object whose unpickling could run code, so it was not loaded."""



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


