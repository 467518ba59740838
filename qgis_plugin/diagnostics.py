"""Diagnostics: the plain text a user pastes into a bug report (the "MTP environment…" dialog, the Copy button).

It says what decides whether MTP runs and how: QGIS, Python and the interpreter the installer uses, the plugin and
dependency folders, each package with its version and the folder it comes from, the compute device, CUDA and the
NVIDIA driver, the OpenGL renderer (Mesa's LLVM is what made the desktop crash with triton), and the latest MTP
warnings and errors. Call it on the GUI thread: it reads OpenGL through a Qt context.
"""
from __future__ import annotations

import configparser
import ctypes
import ctypes.util
import importlib.util
import platform
import sys
from pathlib import Path

from qgis.core import Qgis
from qgis.PyQt.QtCore import PYQT_VERSION_STR, QT_VERSION_STR
from qgis.PyQt.QtGui import QGuiApplication, QOffscreenSurface, QOpenGLContext

from .bootstrap import triton_blocked
from .dependencies import QGIS_PACKAGES, check_dependencies, dependency_root, find, installed_site_packages
from .interpreter import InterpreterNotFound, find_interpreter
from .log_book import log_book
from .torch_build import nvidia_driver_version

PLUGIN_FOLDER = Path(__file__).resolve().parent
GL_VENDOR, GL_RENDERER, GL_VERSION = 0x1F00, 0x1F01, 0x1F02


def plugin_version() -> str:
    """The version in metadata.txt (in the plugin folder once installed, at the project root in a checkout)."""
    for folder in (PLUGIN_FOLDER, PLUGIN_FOLDER.parent):
        metadata = configparser.ConfigParser(interpolation=None)
        if metadata.read(folder / "metadata.txt", encoding="utf-8") and metadata.has_option("general", "version"):
            return metadata.get("general", "version")
    return "unknown"


def opengl_renderer() -> str:
    """The OpenGL renderer QGIS gets from the platform, e.g. "llvmpipe (LLVM 15.0.6, 256 bits), 4.5 ... Mesa 22.3.6"."""
    if QGuiApplication.platformName() in ("offscreen", "minimal"):
        return f"none (Qt platform '{QGuiApplication.platformName()}')"
    context = QOpenGLContext()
    surface = QOffscreenSurface()
    if not context.create():
        return "none (no OpenGL context could be created)"
    surface.setFormat(context.format())
    surface.create()
    if not context.makeCurrent(surface):
        return "unknown (the OpenGL context could not be made current)"
    try:
        library = _gl_library()
        library.glGetString.restype = ctypes.c_char_p
        library.glGetString.argtypes = [ctypes.c_uint]
        values = [library.glGetString(name) for name in (GL_RENDERER, GL_VERSION, GL_VENDOR)]
    except (OSError, AttributeError) as exc:
        return f"unknown ({exc})"
    finally:
        context.doneCurrent()
    renderer, version, vendor = (value.decode(errors="replace") if value else "?" for value in values)
    return f"{renderer}; OpenGL {version}; {vendor}"


def _gl_library():
    if sys.platform == "win32":
        return ctypes.WinDLL("opengl32")
    if sys.platform == "darwin":
        return ctypes.CDLL("/System/Library/Frameworks/OpenGL.framework/OpenGL")
    return ctypes.CDLL(ctypes.util.find_library("GL") or "libGL.so.1")


def device_lines(ready: bool) -> list[str]:
    driver = nvidia_driver_version() or "none found"
    if not ready:
        return ["Device: unknown until torch is installed", f"NVIDIA driver: {driver}"]
    import torch

    from mtp_core.device import describe_device, resolve_device

    try:
        device = describe_device(resolve_device("auto"))
    except (RuntimeError, ValueError) as exc:
        device = f"unusable ({exc})"
    cuda = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda else "torch built without CUDA"
    return [f"Device: {device}", f"CUDA: {cuda}; NVIDIA driver: {driver}"]


def diagnostics_text() -> str:
    status = check_dependencies()
    try:
        interpreter = find_interpreter()
    except InterpreterNotFound as exc:
        interpreter = f"not found ({exc})"
    root = dependency_root()
    installed = installed_site_packages(root)
    engine = importlib.util.find_spec("mtp_core")
    lines = [
        f"MTP for QGIS {plugin_version()} diagnostics",
        f"QGIS: {Qgis.QGIS_VERSION} on {platform.platform()} ({platform.machine()}); Qt {QT_VERSION_STR}, "
        f"PyQt {PYQT_VERSION_STR}",
        f"Python: {platform.python_version()}; interpreter: {interpreter}",
        f"Plugin folder: {PLUGIN_FOLDER}",
        f"Engine (mtp_core): {Path(engine.origin).parent if engine and engine.origin else 'not found'}",
        f"Dependency folder: {installed if installed else f'{root} (nothing installed there)'}",
        "Packages:",
        *(f"  {found.line()}" for found in status.packages),
        *(f"  {find(name).line()}" for name in QGIS_PACKAGES),
        "torch.compile: off inside QGIS (triton is kept out of QGIS: its LLVM crashes the OpenGL driver's)"
        if triton_blocked() else "torch.compile: triton was loaded before the plugin could keep it out",
        *device_lines(status.ok),
        f"OpenGL: {opengl_renderer()}",
        "Latest MTP warnings and errors:",
        *(f"  {entry}" for entry in log_book.entries() or ["(none)"]),
    ]
    return "\n".join(lines)
