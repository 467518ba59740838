"""``mtp info``: versions, the compute device found, registered models."""
from __future__ import annotations

import argparse
import platform

import torch

import mtp_core
from mtp_core.device import describe_device, resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="versions, the compute device found, registered models")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.set_defaults(func=run)


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except ImportError as exc:
        return f"not installed ({exc})"
    return getattr(module, "__version__", "unknown")


def _gdal_version() -> str:
    try:
        from osgeo import gdal
    except ImportError as exc:
        return f"not installed ({exc}); Debian: apt-get install python3-gdal"
    return gdal.__version__


def _param_count(name: str) -> int:
    """Parameters of a registered model, counted on the meta device (no memory, no init cost)."""
    from mtp_core.models import create_model

    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def run(args: argparse.Namespace) -> int:
    from mtp_core.models import list_models, model_entry

    print(f"mtp_core {mtp_core.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"torch {torch.__version__}, timm {_version('timm')}, numpy {_version('numpy')}, "
          f"shapely {_version('shapely')}, GDAL {_gdal_version()}")
    device = resolve_device(args.device)
    print(f"device: {describe_device(device)}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  visible: {describe_device(torch.device('cuda', i))}")
    print("models:")
    for name in list_models():
        entry = model_entry(name)
        print(f"  {name:<28} {entry.kind:<9} {_param_count(name) / 1e6:8.2f} M params  {entry.description}")
    return 0
