""""Install dependencies": torch, torchvision, timm and shapely into a folder the plugin owns, with QGIS's own Python.

Why it is built this way (anchors.md, users' complaint 1: installing dependencies fails or breaks QGIS):

* **A virtual environment under the QGIS profile** (:func:`~qgis_plugin.dependencies.dependency_root`), made by QGIS's
  own interpreter (:mod:`qgis_plugin.interpreter`) with ``--system-site-packages``. pip never writes into QGIS's
  Python, so Debian 12's PEP 668 ("externally-managed-environment") does not apply and nothing of QGIS can break;
  pip sees QGIS's numpy as installed, and a constraint pins it to QGIS's version, so numpy (and GDAL, which is not on
  PyPI in a form that matches QGIS) are never installed or upgraded. The plugin puts the environment's site-packages
  on ``sys.path`` (:mod:`qgis_plugin.bootstrap`), at once after an installation and whenever QGIS loads it.
* **pip from wherever it is**: the interpreter's own, else ``ensurepip``, else the pip wheel from PyPI (a bare Debian
  QGIS has neither python3-pip nor python3-venv).
* **The torch build for the machine** (:mod:`qgis_plugin.torch_build`): CUDA matching the NVIDIA driver, CPU, or
  MPS on Apple silicon. torch and torchvision come from that build's index in one pip run, then timm and shapely from
  pip's configured index, so timm never drags in a second torch. The "Package sources" settings (``mtp/install/...``)
  replace the index ("pip": pip's own configuration, e.g. a company mirror or a local wheel folder) and add pip
  options (``--find-links``, ``--proxy`` ...).
* **A QgsTask** with progress, the pip log line by line (the dialog and ``install.log`` in the folder), and Cancel,
  which stops pip at once. A cancelled or failed first installation removes the half-made environment; the folder is
  marked usable (:func:`~qgis_plugin.dependencies.write_marker`) only after the packages imported in a check run.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from qgis.core import Qgis, QgsMessageLog, QgsSettings, QgsTask
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .bootstrap import use_new_dependencies
from .dependencies import REQUIREMENTS, DependencyStatus, check_dependencies, dependency_root, find, write_marker
from .interpreter import find_interpreter
from .processes import clean_environment, hidden_window_flags
from .torch_build import TorchBuild, torch_build_for_this_machine

LOG_TAG = "MTP"
SETTINGS_PREFIX = "mtp/install/"
TORCH_PACKAGES = ("torch", "torchvision")
PIP_JSON = "https://pypi.org/pypi/pip/json"
#: Run by the environment's Python once pip is done: imports what the plugin imports (triton kept out, as in QGIS).
CHECK = """
import json, sys, sysconfig
sys.modules["triton"] = None
import torch, torchvision, timm, shapely
print("MTP-CHECK " + json.dumps({"site_packages": sysconfig.get_path("purelib"), "torch": torch.__version__,
      "torchvision": torchvision.__version__, "timm": timm.__version__, "shapely": shapely.__version__,
      "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
      "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}))
"""


class InstallError(RuntimeError):
    """An installation step failed; the message says which and why (pip's own last error lines)."""


class InstallCancelled(Exception):
    pass


@dataclass(frozen=True)
class InstallOptions:
    """Where packages come from. ``torch_index``: "auto" (the build for this machine), "pip" (pip's own configured
    index for torch too) or an index URL; ``pip_options``: more pip options, as typed on a command line."""

    torch_index: str = "auto"
    pip_options: str = ""

    @classmethod
    def load(cls, settings: QgsSettings | None = None) -> InstallOptions:
        settings = settings or QgsSettings()
        return cls(str(settings.value(SETTINGS_PREFIX + "torch_index", "auto") or "auto").strip(),
                   str(settings.value(SETTINGS_PREFIX + "pip_options", "") or "").strip())

    def save(self, settings: QgsSettings | None = None) -> None:
        settings = settings or QgsSettings()
        settings.setValue(SETTINGS_PREFIX + "torch_index", self.torch_index)
        settings.setValue(SETTINGS_PREFIX + "pip_options", self.pip_options)

    def torch_build(self, automatic: Callable[[], TorchBuild] = torch_build_for_this_machine) -> TorchBuild:
        if self.torch_index == "auto":
            return automatic()
        if self.torch_index == "pip":
            return TorchBuild("build from pip's configured index", None, size="")
        return TorchBuild(f"build from {self.torch_index}", self.torch_index, size="")

    def extra_arguments(self) -> list[str]:
        """The options as pip gets them; quotes group words (on Windows too, where backslashes are path separators)."""
        try:
            words = shlex.split(self.pip_options, posix=os.name != "nt")
        except ValueError as exc:
            raise InstallError(f"the extra pip options cannot be read ({exc}): check their quotes") from None
        return [w[1:-1] if len(w) > 1 and w[0] == w[-1] and w[0] in "\"'" else w for w in words]


def environment_python(root: Path) -> Path:
    return root / "Scripts" / "python.exe" if os.name == "nt" else root / "bin" / "python"


def requirement_specs(names: tuple[str, ...]) -> list[str]:
    return [r.pip_spec for r in REQUIREMENTS if r.name in names]


def numpy_constraint() -> str:
    """A pip constraint that keeps QGIS's numpy: pip may never install or upgrade it for the plugin."""
    numpy = find("numpy")
    return f"numpy=={numpy.version}\n" if numpy.version else ""


# ------------------------------------------------------------------------------------------ running child processes
class Runner:
    """Runs commands one after another, streaming their output to ``log`` line by line; ``cancelled()`` is polled
    five times a second, and a cancel kills the running command."""

    def __init__(self, log: Callable[[str], None], cancelled: Callable[[], bool] = lambda: False,
                 on_line: Callable[[str], None] = lambda line: None) -> None:
        self.log, self.cancelled, self.on_line = log, cancelled, on_line
        self.env = clean_environment()

    def run(self, argv: list[str], what: str) -> list[str]:
        """Runs ``argv``; its output lines. Raises InstallError (with the last error lines) or InstallCancelled."""
        self.log("$ " + " ".join(shlex.quote(str(a)) for a in argv))
        try:
            process = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                                       env=self.env, creationflags=hidden_window_flags())
        except OSError as exc:
            raise InstallError(f"{what}: cannot start {argv[0]} ({exc.strerror})") from exc
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
        output: list[str] = []
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.cancelled():
                    _stop(process)
                    raise InstallCancelled() from None
                continue
            if line is None:
                break
            line = line.rstrip()
            output.append(line)
            self.log(line)
            self.on_line(line)
        if process.wait() != 0:
            raise InstallError(f"{what} failed (exit code {process.returncode}): {_last_error(output)}")
        return output


def _pump(process: subprocess.Popen, lines: queue.Queue) -> None:
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _last_error(output: list[str]) -> str:
    errors = [line.strip() for line in output if line.strip().startswith("ERROR")]
    lines = errors or [line.strip() for line in output if line.strip()]
    return " ".join(lines[-3:])[-600:] or "no output; see the installation log"


# ------------------------------------------------------------------------------------------ the steps
def make_environment(interpreter: str, root: Path, runner: Runner) -> Path:
    """The virtual environment at ``root`` (made when missing) and its Python."""
    python = environment_python(root)
    if not python.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        runner.run([interpreter, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
                   "creating the plugin's Python environment")
    return python


def ensure_pip(python: Path, runner: Runner, work: Path) -> None:
    """pip for ``python``: its own (QGIS's pip shows through --system-site-packages), else ensurepip, else the pip
    wheel from PyPI, which pip can run from."""
    if _has_pip(python, runner):
        return
    try:
        runner.run([python, "-m", "ensurepip", "--default-pip"], "installing pip with ensurepip")
    except InstallError:
        runner.log("ensurepip is not available either: downloading pip from PyPI")
    if not _has_pip(python, runner):
        install_pip_from_pypi(python, runner, work)


def install_pip_from_pypi(python: Path, runner: Runner, work: Path) -> None:
    """The newest pip from PyPI into ``python``'s environment, run from its own wheel."""
    wheel = download_pip_wheel(work, runner.log)
    runner.run([python, str(wheel / "pip"), "install", "--no-index", str(wheel)], "installing pip")


def _has_pip(python: Path, runner: Runner) -> bool:
    try:
        runner.run([python, "-m", "pip", "--version"], "looking for pip")
    except InstallError:
        return False
    return True


def download_pip_wheel(folder: Path, log: Callable[[str], None]) -> Path:
    """The newest pip wheel from PyPI, checked against PyPI's SHA-256 (pip can run from its own wheel)."""
    try:
        with urllib.request.urlopen(PIP_JSON, timeout=60) as answer:
            release = json.load(answer)
        wheel = next(u for u in release["urls"] if u["filename"].endswith("-py3-none-any.whl"))
        url = urllib.parse.urljoin(PIP_JSON, wheel["url"])  # mirrors answer with relative links
        log(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=300) as answer:
            data = answer.read()
    except (OSError, ValueError, KeyError, StopIteration) as exc:
        raise InstallError(f"QGIS's Python has no pip, and pip could not be downloaded from PyPI ({exc}); install "
                           "pip for QGIS's Python (Debian/Ubuntu: sudo apt install python3-pip) and try again") from exc
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        raise InstallError("the pip wheel downloaded from PyPI does not match its published SHA-256; try again")
    path = folder / wheel["filename"]
    path.write_bytes(data)
    return path


def pip_commands(python: Path, build: TorchBuild, options: InstallOptions, constraints: Path) -> list[tuple[str, list]]:
    """The two pip runs: torch + torchvision from the build's index, then timm + shapely (torch already satisfied)."""
    # --no-compile: Python compiles the modules it imports on first use; compiling all of torch's thousands of files
    # up front doubled the installation time
    pip = [python, "-m", "pip", "install", "--no-warn-script-location", "--progress-bar", "off", "--no-compile",
           "--constraint", str(constraints), *options.extra_arguments()]
    index = ["--index-url", build.index_url] if build.index_url else []
    return [(f"installing PyTorch ({build.label})", [*pip, *index, *requirement_specs(TORCH_PACKAGES)]),
            ("installing timm and shapely", [*pip, *requirement_specs(("timm", "shapely"))])]


def check_environment(python: Path, runner: Runner) -> dict:
    """Imports the packages in the environment's own Python; their versions and the site-packages folder."""
    for line in runner.run([python, "-c", CHECK], "checking the installed packages"):
        if line.startswith("MTP-CHECK "):
            return json.loads(line[len("MTP-CHECK "):])
    raise InstallError("checking the installed packages printed no result; see the installation log")


# ------------------------------------------------------------------------------------------ the task
@dataclass(frozen=True)
class InstallOutcome:
    state: Literal["done", "cancelled", "failed"]
    message: str
    installed: dict = field(default_factory=dict)
    status: DependencyStatus | None = None  # this QGIS session's view once the folder is on sys.path

    @property
    def restart_needed(self) -> bool:
        return self.state == "done" and self.status is not None and not self.status.ok


#: (progress at the start of each step, in %) for: environment, pip, torch, timm + shapely, check
_STAGES = (0.0, 5.0, 10.0, 75.0, 92.0, 100.0)


class InstallTask(QgsTask):
    """One installation into ``root`` (default: :func:`~qgis_plugin.dependencies.dependency_root`)."""

    line_logged = pyqtSignal(str)
    stage_changed = pyqtSignal(str)

    def __init__(self, root: Path | None = None, options: InstallOptions | None = None) -> None:
        super().__init__("MTP: installing torch, timm and shapely", QgsTask.CanCancel)
        self.root = root or dependency_root()
        self.options = options or InstallOptions.load()
        self.constraints = numpy_constraint()  # read here, on the main thread: QGIS's numpy as this process sees it
        self.outcome: InstallOutcome | None = None
        self._stage = 0
        self._lines_in_stage = 0
        self._log_file = None

    # ---------------------------------------------------------------------------------------- worker thread
    def run(self) -> bool:
        created = not environment_python(self.root).exists()
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.root.parent / f"{self.root.name}-install.log", "w", encoding="utf-8")
            self.outcome = InstallOutcome("done", "", self._install())
        except InstallCancelled:
            self.outcome = InstallOutcome("cancelled", "Installation cancelled; nothing of QGIS was changed.")
        except (InstallError, OSError, RuntimeError) as exc:
            self.outcome = InstallOutcome("failed", f"Installation failed: {exc}")
            self._log(self.outcome.message)
        finally:
            if self._log_file is not None:
                self._log_file.close()
        if self.outcome.state != "done" and created:
            shutil.rmtree(self.root, ignore_errors=True)  # no half-made environment left behind
        return self.outcome.state == "done"

    def _install(self) -> dict:
        runner = Runner(self._log, self.isCanceled, self._advance)
        build = self.options.torch_build()
        self._enter(0, "finding QGIS's Python")
        interpreter = find_interpreter()
        self._log(f"QGIS's Python: {interpreter}; installing into {self.root}; {build.describe()}")
        python = make_environment(interpreter, self.root, runner)
        self._enter(1, "getting pip")
        with tempfile.TemporaryDirectory(prefix="mtp-install-") as work:
            ensure_pip(python, runner, Path(work))
            constraints = Path(work) / "constraints.txt"
            constraints.write_text(self.constraints, encoding="utf-8")
            for stage, (what, argv) in enumerate(pip_commands(python, build, self.options, constraints), start=2):
                self._enter(stage, what)
                runner.run(argv, what)
        self._enter(4, "checking the installed packages")
        installed = check_environment(python, runner)
        write_marker(self.root, installed["site_packages"], {"interpreter": interpreter, "torch_build": build.label,
                                                             "installed_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        self.setProgress(100.0)
        return installed

    def _enter(self, stage: int, what: str) -> None:
        self._stage, self._lines_in_stage = stage, 0
        self.setProgress(_STAGES[stage])
        self.stage_changed.emit(what + "…")

    def _advance(self, line: str) -> None:
        """Moves the bar within a step on pip's milestones (it cannot know the sizes in advance)."""
        if line.startswith(("Collecting", "Downloading", "Installing collected", "Successfully")):
            self._lines_in_stage += 1
            start, end = _STAGES[self._stage], _STAGES[self._stage + 1]
            self.setProgress(start + (end - start) * (1 - 0.85 ** self._lines_in_stage))

    def _log(self, line: str) -> None:
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()
        self.line_logged.emit(line)

    # ---------------------------------------------------------------------------------------- GUI thread
    def finished(self, result: bool) -> None:
        outcome = self.outcome or InstallOutcome("cancelled", "Installation cancelled before it started.")
        if outcome.state == "done":
            use_new_dependencies()  # this session sees the new packages at once (unless older ones were loaded)
            status = check_dependencies()
            versions = ", ".join(f"{name} {outcome.installed[name]}" for name in ("torch", "torchvision", "timm",
                                                                                   "shapely"))
            message = (f"Installed {versions} into {self.root}." + (" MTP is ready." if status.ok else
                       " Restart QGIS to use them: " + "; ".join(status.problems) + " in this session."))
            outcome = InstallOutcome("done", message, outcome.installed, status)
        level = {"done": Qgis.Success, "cancelled": Qgis.Info, "failed": Qgis.Critical}[outcome.state]
        QgsMessageLog.logMessage(outcome.message, LOG_TAG, Qgis.Warning if level == Qgis.Critical else Qgis.Info)
        self.outcome = outcome
        installs.finish(self)


class Installations(QObject):
    """The one installation of this QGIS session, shared by the dock and the environment dialog."""

    started = pyqtSignal(object)  # the InstallTask
    done = pyqtSignal(object)  # its InstallOutcome

    def __init__(self) -> None:
        super().__init__()
        self.task: InstallTask | None = None

    @property
    def running(self) -> bool:
        return self.task is not None

    def start(self, task: InstallTask | None = None, add_to_manager: bool = True) -> InstallTask:
        """Starts an installation (the running one when there is one); ``add_to_manager=False`` leaves running it
        to the caller (``task.run()`` then ``task.finished(result)``)."""
        if self.task is not None:
            return self.task
        from qgis.core import QgsApplication

        self.task = task or InstallTask()
        self.started.emit(self.task)
        if add_to_manager:
            QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def finish(self, task: InstallTask) -> None:
        if task is self.task:
            self.task = None
        self.done.emit(task.outcome)


installs = Installations()
