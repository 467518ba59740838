#!/usr/bin/env bash
# One-command set-up on Debian 12 (bookworm), as root or with sudo. Idempotent: a second run takes seconds.
# QGIS 3.22 / GDAL 3.6 / PyQt5 come from Debian (built for /usr/bin/python3); torch/timm/shapely/pytest go into
# ./.venv, made from that python with --system-site-packages. Never pip-installs PyQt5 or numpy 2.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
# qgis: the desktop and qgis_process (call /usr/bin/qgis_process.bin: Debian's qgis_process wrapper fails headless);
# xvfb, xauth, x11-utils: the desktop test runs the real qgis binary on a virtual X screen with OpenGL (Mesa comes
# with qgis) and checks with xdpyinfo that the screen offers GLX
APT_PKGS="python3-qgis qgis-providers python3-gdal gdal-bin python3-venv qgis xvfb xauth x11-utils"
if ! dpkg -s $APT_PKGS >/dev/null 2>&1; then
  echo "setup: installing Debian packages: $APT_PKGS"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-unsafe-io $APT_PKGS >/dev/null
fi
if ! "$VENV/bin/python" -c "import qgis.core" 2>/dev/null; then   # missing, or made from another python
  echo "setup: creating $VENV from /usr/bin/python3 (--system-site-packages)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages (requirements.txt) and this project (editable)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt \
    2> >(grep -v "is ignored: it is neither" >&2)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . \
    2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
fi
# Smoke check: catches a numpy 2 or a pip PyQt5 that slipped into the venv (both break Debian's QGIS/GDAL).
QT_QPA_PLATFORM=offscreen "$VENV/bin/python" - <<'PY'
from qgis.core import Qgis
from osgeo import gdal, gdal_array  # noqa: F401  (gdal_array fails under numpy 2)
import numpy, shapely, torch, timm
print(f"setup ok: QGIS {Qgis.QGIS_VERSION}, GDAL {gdal.__version__}, numpy {numpy.__version__}, "
      f"torch {torch.__version__}, timm {timm.__version__}, shapely {shapely.__version__}")
PY
