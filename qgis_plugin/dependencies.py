"""Which of the engine's packages QGIS's Python has, in which version and from which folder, found without importing
them: a missing or broken torch must never break QGIS, and the answer must name the copy Python would import.

The minimums are ``pyproject.toml``'s lower bounds (a test keeps them equal): torch 2.6 for safe checkpoint loading,
timm 0.9 for the ViT building blocks, shapely 2.1 for its coverage simplification (Debian 12's python3-shapely is
1.8.5 and must be reported as too old, not taken as present). torchvision has no range of its own: timm imports it,
and it must be the build that matches torch, so it is installed with torch from the same package index.

The plugin's own dependency folder (a virtual environment that :mod:`qgis_plugin.installer` makes under the QGIS
profile) is described here too, because :mod:`qgis_plugin.bootstrap` puts it on ``sys.path`` when QGIS loads the
plugin and the installer fills it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication

FOLDER_NAME = "mtp_qgis"  # under the QGIS profile folder, beside python/plugins (survives plugin upgrades)
MARKER = "mtp_install.json"  # written by the installer when a run succeeded: the environment's site-packages


@dataclass(frozen=True)
class Requirement:
    name: str  # the distribution and import name
    minimum: str
    why: str

    @property
    def pip_spec(self) -> str:
        return f"{self.name}>={self.minimum}"


REQUIREMENTS = (
    Requirement("torch", "2.6", "safe checkpoint loading (torch.load with weights_only)"),
    Requirement("torchvision", "0.21", "timm imports it; the build that matches torch"),
    Requirement("timm", "0.9", "the models' ViT building blocks"),
    Requirement("shapely", "2.1", "cleaning the polygons (coverage simplification, new in 2.1)"),
)
#: Reported in the diagnostics, never installed by the plugin: they are QGIS's own.
QGIS_PACKAGES = ("numpy", "osgeo")


def version_tuple(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: "2.14.1+cu130" -> (2, 14, 1); enough to compare with a minimum."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


@dataclass(frozen=True)
class Found:
    """One package as this QGIS process sees it."""

    name: str
    version: str | None  # None: not importable
    folder: str | None  # the folder it is (or would be) imported from
    source: str  # that folder in words: the plugin's dependency folder, QGIS's Python, ...
    minimum: str = ""

    @property
    def ok(self) -> bool:
        return self.version is not None and version_tuple(self.version) >= version_tuple(self.minimum)

    def problem(self) -> str | None:
        if self.version is None:
            return f"{self.name} is missing"
        if not self.ok:
            return (f"{self.name} {self.version} ({self.source}) is too old: MTP needs {self.name} {self.minimum} or "
                    "newer")
        return None

    def line(self) -> str:
        need = f" (needs {self.minimum} or newer)" if self.minimum else ""
        if self.version is None:
            return f"{self.name}: missing{need}"
        mark = "" if self.ok else "  <- too old"
        return f"{self.name} {self.version}{need} from {self.source}: {self.folder}{mark}"


@dataclass(frozen=True)
class DependencyStatus:
    packages: tuple[Found, ...]

    @property
    def ok(self) -> bool:
        return all(found.ok for found in self.packages)

    @property
    def missing(self) -> tuple[str, ...]:
        """The packages to install or upgrade."""
        return tuple(found.name for found in self.packages if not found.ok)

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(problem for found in self.packages if (problem := found.problem()) is not None)

    def summary(self) -> str:
        """One sentence for the dock and the message log."""
        if self.ok:
            return "torch, torchvision, timm and shapely are installed."
        return "MTP cannot run yet: " + "; ".join(self.problems) + "."


def check_dependencies() -> DependencyStatus:
    return DependencyStatus(tuple(find(r.name, r.minimum) for r in REQUIREMENTS))


def find(name: str, minimum: str = "") -> Found:
    """The copy of ``name`` this process imports (or has imported), its version and where it comes from."""
    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None):
        folder = str(Path(module.__file__).resolve().parents[1])
        version = getattr(module, "__version__", None) or _version_in(folder, name)
        return Found(name, str(version) if version else None, folder, describe_folder(folder), minimum)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a package blocked in sys.modules, or a broken one
        spec = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return Found(name, None, None, "", minimum)
    folder = str(Path(spec.origin).resolve().parents[1])
    return Found(name, _version_in(folder, name), folder, describe_folder(folder), minimum)


def _version_in(folder: str, name: str) -> str | None:
    """The version in the package metadata of ``folder`` (dist-info or egg-info), the copy imported from there."""
    wanted = _normal(name)
    for distribution in importlib.metadata.distributions(path=[folder]):
        if _normal(distribution.metadata["Name"] or "") == wanted:
            return distribution.version
    if name == "osgeo":  # GDAL's bindings: the distribution is called GDAL
        return _version_in(folder, "GDAL")
    return None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe_folder(folder: str) -> str:
    """Where a package comes from, in the words a user needs to fix it."""
    path = Path(folder).resolve()
    own = installed_site_packages()
    if own is not None and path == own.resolve():
        return "the plugin's dependency folder"
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE is not None else ""
    if user_site and path == Path(user_site).resolve():
        return "the user's site-packages (pip --user)"
    if any(path == Path(p).resolve() for p in _system_site_packages()) or _is_within(path, Path(sys.base_prefix)):
        return "QGIS's Python"
    return "another folder on sys.path (PYTHONPATH?)"


def _system_site_packages() -> list[str]:
    try:
        return site.getsitepackages()
    except AttributeError:  # some embedded interpreters have an old site module
        return []


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------ the plugin's own folder
def dependency_root(profile_folder: str | None = None) -> Path:
    """The plugin's dependency folder for this Python version, in the QGIS profile (one per X.Y: a QGIS upgrade that
    brings another Python gets a fresh one instead of extension modules built for the old one)."""
    profile = Path(profile_folder or QgsApplication.qgisSettingsDirPath())
    return profile / FOLDER_NAME / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def installed_site_packages(root: Path | None = None) -> Path | None:
    """The site-packages of the plugin's environment once an installation finished there, else None."""
    root = root or dependency_root()
    try:
        record = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    folder = Path(record.get("site_packages", ""))
    return folder if folder.is_absolute() and folder.is_dir() else None


def write_marker(root: Path, site_packages: str, details: dict) -> None:
    """Marks the environment as complete (the last step of an installation), atomically."""
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps({"site_packages": site_packages, **details}, indent=1), encoding="utf-8")
    os.replace(tmp, root / MARKER)
