"""The ``mtp`` command line as a user runs it."""
from __future__ import annotations

import subprocess
import sys

from mtp_core.cli import main
from mtp_core.models import list_models


def test_info_prints_versions_device_and_every_model(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "timm " in out and "GDAL " in out
    assert "device: " in out
    for name in list_models():
        assert name in out
    assert "125.85 M params" in out  # ViT-B + UperNet 512, as the original (93,591,872 + 32,257,026)


def test_bad_device_is_an_error_not_a_traceback(capsys) -> None:
    assert main(["info", "--device", "gpu"]) == 2
    assert "mtp info: error: unknown device 'gpu'" in capsys.readouterr().err


def test_console_script_runs() -> None:
    exe = subprocess.run([sys.executable, "-m", "mtp_core.cli", "--version"], capture_output=True, text=True)
    assert exe.returncode == 0 and exe.stdout.startswith("mtp_core ")
