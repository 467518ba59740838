#!/usr/bin/env bash
# Builds dist/mtp_qgis.zip (or the path given as $1): the QGIS plugin as plugins.qgis.org and
# "Plugins > Install from ZIP" take it. One top folder, mtp_qgis/ (a valid Python identifier), holding:
#   qgis_plugin's files at its root (__init__.py with classFactory, plugin.py, processing/, icon.svg, ...),
#   metadata.txt and LICENSE from the repository root,
#   vendor/mtp_core/ (the engine, demo weights included). QGIS's Python has no mtp_core of its own, and
#   qgis_plugin/bootstrap.py puts vendor/ (only vendor/, see its docstring) first on sys.path.
# No __pycache__, .pyc or hidden files; the entries are sorted and dated 1980-01-01, so the same sources give the
# same zip. Fails when the zip reaches plugins.qgis.org's 25 MB limit or metadata.txt lacks a required key.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - "${1:-dist/mtp_qgis.zip}" <<'PY'
import configparser
import os
import sys
import zipfile
from pathlib import Path

TOP = "mtp_qgis"
LIMIT = 25 * 1024 * 1024  # plugins.qgis.org rejects larger uploads
REQUIRED = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
            "tracker")


def tree(root: Path, prefix: str) -> list[tuple[Path, str]]:
    """Files under ``root`` as (source, name in the zip), without caches or hidden files."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            path = Path(folder) / name
            found.append((path, f"{prefix}/{path.relative_to(root).as_posix()}"))
    return found


metadata = configparser.ConfigParser(interpolation=None)
metadata.optionxform = str  # keys are case-sensitive (qgisMinimumVersion)
metadata.read("metadata.txt", encoding="utf-8")
missing = [key for key in REQUIRED if not metadata.get("general", key, fallback="").strip()]
if missing:
    sys.exit(f"build_plugin: metadata.txt lacks {', '.join(missing)}; plugins.qgis.org requires them")

entries = tree(Path("qgis_plugin"), TOP) + [(Path("metadata.txt"), f"{TOP}/metadata.txt"),
                                            (Path("LICENSE"), f"{TOP}/LICENSE")]
entries += tree(Path("mtp_core"), f"{TOP}/vendor/mtp_core")
icon = metadata.get("general", "icon", fallback="")
if icon and f"{TOP}/{icon}" not in {name for _, name in entries}:
    sys.exit(f"build_plugin: metadata.txt names icon={icon}, but qgis_plugin/{icon} does not exist")

out = Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_name(f".{out.name}.tmp")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    for source, name in sorted(entries, key=lambda e: e[1]):
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, source.read_bytes())
size = tmp.stat().st_size
if size >= LIMIT:
    tmp.unlink()
    sys.exit(f"build_plugin: the zip would be {size / 2**20:.1f} MB, over plugins.qgis.org's 25 MB limit; "
             "move large files (e.g. weights) out of qgis_plugin/ and mtp_core/")
os.replace(tmp, out)
print(f"build_plugin: {out} ({len(entries)} files, {size / 2**20:.1f} MB); install it with "
      "QGIS > Plugins > Manage and Install Plugins > Install from ZIP")
PY
