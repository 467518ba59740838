"""The ``mtp`` command line: ``mtp info`` and ``mtp convert-ckpt`` (more subcommands join as the engine grows)."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Sequence

import torch

import mtp_core
from mtp_core.device import describe_device, resolve_device


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


def cmd_info(args: argparse.Namespace) -> int:
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


def cmd_convert_ckpt(args: argparse.Namespace) -> int:
    from mtp_core.checkpoint import convert_checkpoint

    report = convert_checkpoint(
        args.src, args.dst, reuse_decoder=args.reuse_decoder, architecture=args.arch, num_classes=args.num_classes
    )
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0


def cmd_synth(argv: list[str]) -> int:
    from mtp_core.synthetic import main as synth_main

    return synth_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtp", description="MTP remote-sensing models: inspect, convert, run.")
    parser.add_argument("--version", action="version", version=f"mtp_core {mtp_core.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="versions, the compute device found, registered models")
    info.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    info.set_defaults(func=cmd_info)

    conv = sub.add_parser(
        "convert-ckpt",
        help="turn a released MTP/MAE/MMSeg checkpoint into a complete fine-tuning checkpoint (with model card)",
        description="Reads any MTP, MAE or MMSeg checkpoint layout safely (weights_only) and writes it atomically. "
        "none: backbone weights, resized to the fine-tuning size; semseg: also the pretrained UperNet decoder "
        "(256 channels); rotdet: the key renaming of MTP's scripts/change_ckpt.py, for MMRotate.",
    )
    conv.add_argument("src", help="input checkpoint (.pth)")
    conv.add_argument("dst", help="output checkpoint (.pth); written atomically")
    conv.add_argument("--reuse-decoder", choices=("none", "semseg", "rotdet"), default="none")
    conv.add_argument("--arch", default=None, help="target segmentor name (default: inferred from the weights)")
    conv.add_argument("--num-classes", type=int, default=None, help="classes of the target head (default: the file's class count, else 2)")
    conv.set_defaults(func=cmd_convert_ckpt)

    sub.add_parser("synth", help="write synthetic 0.5 m scenes (GeoTIFF + building GeoJSON); see `mtp synth -h`",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:  # its own parser (mtp_core.synthetic.main), shared with `python -m mtp_core.synthetic`
        return cmd_synth(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"mtp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
