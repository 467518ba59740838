"""The pieces of "Install dependencies", each for real: the build chosen per machine, QGIS's own interpreter, pip
found or bootstrapped, pip's errors and Cancel, and a failed or cancelled installation leaving nothing behind. The
whole installation, from the button to a run, is in ``test_desktop.py``."""
from __future__ import annotations

import os
import sys
import time

import pytest
from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtWidgets import QApplication

import qgis_plugin
from qgis_plugin.installer import (
    InstallCancelled,
    InstallError,
    InstallOptions,
    InstallTask,
    Runner,
    environment_python,
    install_pip_from_pypi,
    installs,
    numpy_constraint,
    pip_commands,
)
from qgis_plugin.interpreter import find_interpreter
from qgis_plugin.processes import clean_environment
from qgis_plugin.torch_build import PYTORCH_INDEX, TorchBuild, UnsupportedPlatform, choose_torch_build


@pytest.mark.parametrize("system, machine, driver, label, index", [
    ("Linux", "x86_64", None, "CPU build (no NVIDIA driver found)", "cpu"),
    ("Linux", "x86_64", "580.95.05", "CUDA 13.0 build (NVIDIA driver 580.95.05)", "cu130"),
    ("Linux", "x86_64", "550.54.14", "CUDA 12.8 build (NVIDIA driver 550.54.14)", "cu128"),
    ("Linux", "x86_64", "470.82.01", "CPU build (NVIDIA driver 470.82.01 is too old for CUDA 12)", "cpu"),
    ("Windows", "AMD64", "528.24", "CPU build (NVIDIA driver 528.24 is too old for CUDA 12)", None),
    ("Windows", "AMD64", "566.14", "CUDA 12.8 build (NVIDIA driver 566.14)", "cu128"),
    ("Windows", "AMD64", None, "CPU build (no NVIDIA driver found)", None),
    ("Darwin", "arm64", None, "macOS build (Apple silicon GPU through MPS)", None),
])
def test_the_torch_build_follows_the_machine(system, machine, driver, label, index) -> None:
    build = choose_torch_build(system, machine, driver)
    assert build.label == label and build.index_url == (PYTORCH_INDEX + index if index else None)
    if "too old" in label:
        assert build.note.startswith("update the NVIDIA driver to 52")


def test_intel_macs_are_told_why_there_is_no_torch() -> None:
    with pytest.raises(UnsupportedPlatform, match="Intel Macs at version 2.2, and MTP needs 2.6"):
        choose_torch_build("Darwin", "x86_64", None)


def test_package_sources_come_from_the_settings(qgis_app) -> None:
    settings = QgsSettings()
    InstallOptions("pip", "--find-links '/wheels here' --no-cache-dir").save(settings)
    options = InstallOptions.load(settings)
    assert options.extra_arguments() == ["--find-links", "/wheels here", "--no-cache-dir"]
    assert options.torch_build().index_url is None
    assert InstallOptions("https://mirror.example/torch").torch_build().index_url == "https://mirror.example/torch"
    assert InstallOptions().torch_build(lambda: TorchBuild("x", "y")).index_url == "y"  # "auto": the machine's
    settings.remove("mtp/install")
    with pytest.raises(InstallError, match="extra pip options cannot be read"):
        InstallOptions("auto", "--proxy 'unclosed").extra_arguments()


def test_pip_runs_torch_from_its_index_then_the_rest_with_qgis_numpy_pinned(tmp_path) -> None:
    import numpy

    assert numpy_constraint() == f"numpy=={numpy.__version__}\n"
    python = environment_python(tmp_path)
    (torch_step, torch_argv), (rest_step, rest_argv) = pip_commands(
        python, TorchBuild("CPU build", PYTORCH_INDEX + "cpu"), InstallOptions("auto", "--no-cache-dir"),
        tmp_path / "constraints.txt")
    assert torch_step == "installing PyTorch (CPU build)" and rest_step == "installing timm and shapely"
    for argv in (torch_argv, rest_argv):
        assert argv[:4] == [python, "-m", "pip", "install"] and {"--no-cache-dir", "--no-compile"} <= set(argv)
        assert argv[argv.index("--constraint") + 1] == str(tmp_path / "constraints.txt")
    assert torch_argv[-4:] == ["--index-url", PYTORCH_INDEX + "cpu", "torch>=2.6", "torchvision>=0.21"]
    assert "--index-url" not in rest_argv and rest_argv[-2:] == ["timm>=0.9", "shapely>=2.1"]


def test_the_interpreter_is_qgis_own_python_not_this_venv_or_path() -> None:
    assert sys.prefix != sys.base_prefix  # the tests run in a venv, whose python is the wrong one
    assert find_interpreter() == os.path.realpath("/usr/bin/python3")


def test_clean_environment_drops_what_points_python_elsewhere(monkeypatch) -> None:
    for name, value in (("PYTHONHOME", "/qgis/apps/Python39"), ("PYTHONPATH", "/x"), ("PIP_TARGET", "/y"),
                        ("PIP_INDEX_URL", "https://mirror.example/simple")):
        monkeypatch.setenv(name, value)
    env = clean_environment()
    assert not {"PYTHONHOME", "PYTHONPATH", "PIP_TARGET"} & set(env)
    assert env["PIP_INDEX_URL"] == "https://mirror.example/simple" and env["PYTHONNOUSERSITE"] == "1"


def test_pip_comes_from_pypi_when_the_python_has_none(tmp_path) -> None:
    """A bare Debian QGIS has neither python3-pip nor ensurepip: pip then comes as PyPI's wheel, checked."""
    lines: list[str] = []
    runner = Runner(lines.append)
    runner.run([find_interpreter(), "-m", "venv", "--without-pip", str(tmp_path / "env")], "a Python without pip")
    python = environment_python(tmp_path / "env")
    with pytest.raises(InstallError, match="No module named pip"):
        runner.run([python, "-m", "pip", "--version"], "looking for pip")
    install_pip_from_pypi(python, runner, tmp_path)
    assert runner.run([python, "-m", "pip", "--version"], "looking for pip")[0].startswith("pip ")
    assert any(line.startswith("downloading https://") and line.endswith("-py3-none-any.whl") for line in lines)


def test_a_failing_command_says_what_failed_with_pips_error(tmp_path) -> None:
    code = ("print('Collecting torch'); print('ERROR: No matching distribution found for torch>=99'); "
            "raise SystemExit(1)")
    with pytest.raises(InstallError, match=r"installing PyTorch failed \(exit code 1\): ERROR: No matching "
                                           r"distribution found for torch>=99"):
        Runner(lambda line: None).run([sys.executable, "-c", code], "installing PyTorch")


def test_cancel_stops_the_running_command_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(InstallCancelled):
        Runner(lambda line: None, lambda: time.monotonic() - started > 0.5).run(
            [sys.executable, "-c", "import time; time.sleep(60)"], "waiting")
    assert time.monotonic() - started < 10


def test_a_failed_installation_removes_its_environment_and_keeps_the_log(qgis_app, tmp_path, monkeypatch) -> None:
    root = tmp_path / "mtp_qgis" / "python3.11"
    (tmp_path / "no wheels").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no wheels"))  # instead of this machine's wheel folder
    task = InstallTask(root, InstallOptions("pip", "--no-index"))  # so pip finds nothing
    assert not task.run()
    assert task.outcome.state == "failed"
    assert "installing PyTorch (build from pip's configured index) failed (exit code 1): ERROR:" in task.outcome.message
    assert not root.exists()  # made by this run: removed
    log = (root.parent / "python3.11-install.log").read_text()
    assert f"installing into {root}" in log and "-m venv --system-site-packages" in log
    assert "ERROR: " in log and "torch>=2.6" in log.split("ERROR: ", 1)[1]  # pip's own words on what it missed


def test_cancel_during_the_torch_download_leaves_nothing(qgis_app, tmp_path) -> None:
    root = tmp_path / "mtp_qgis" / "python3.11"
    task = InstallTask(root, InstallOptions("pip"))
    task.stage_changed.connect(lambda stage: task.cancel() if stage.startswith("installing PyTorch") else None)
    outcomes: list = []
    installs.done.connect(outcomes.append)
    installs.start(task)
    deadline = time.monotonic() + 300
    while not outcomes:
        assert time.monotonic() < deadline, "the installation did not stop"
        QgsApplication.processEvents()
        time.sleep(0.02)
    installs.done.disconnect(outcomes.append)
    assert outcomes[0].state == "cancelled" and not installs.running and not root.exists()


def test_the_environment_dialog_shows_copyable_diagnostics_and_the_install_button(iface, qgis_app) -> None:
    plugin = qgis_plugin.classFactory(iface)
    plugin.initGui()
    iface.toolbar.actions()[1].trigger()  # MTP environment…
    dialog = plugin.environment_dialog
    assert dialog is not None and dialog.isVisible()
    text = dialog.text.toPlainText()
    assert text.startswith("MTP for QGIS") and "Packages:" in text and "OpenGL: " in text
    dialog.copy_button.click()
    assert QApplication.clipboard().text() == text
    assert dialog.install_panel.isVisible() and dialog.install_panel.install_button.text() == "Install dependencies"
    dialog.torch_source.setCurrentIndex(dialog.torch_source.findData("url"))
    dialog.torch_url.setText("https://download.pytorch.org/whl/cu128")
    dialog.save_sources()
    assert InstallOptions.load().torch_index == "https://download.pytorch.org/whl/cu128"
    QgsSettings().remove("mtp/install")
    plugin.unload()
    QgsApplication.processEvents()
    assert plugin.environment_dialog is None
