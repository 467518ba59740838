"""Engine errors as Processing errors: the parameter and the layer in the message, said once.

* The engine's ``ValueError``/``OSError`` (messages that say what to do) and a cancel become a
  ``QgsProcessingException``; its CLI options become parameters and its paths the parameter and layer they belong
  to (:func:`qgis_plugin.wording.for_processing`).
* ``qgis_process`` prints every critical message of QGIS's message log, and QGIS logs a failed algorithm's message
  twice (``QgsProcessingAlgorithm::run`` and ``QgsProcessingFeedback::reportError``) besides printing it as
  ``ERROR:``: the same sentence three times. In ``qgis_process`` only, the plugin mutes the message log once its
  error is decided (the process ends right after), so the message appears once: as ``ERROR:``, or on stderr with
  ``--json``, whose output omits errors. The desktop's log is never touched.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping

from qgis.core import QgsApplication, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication, QTimer

from ..wording import for_processing


def in_qgis_process() -> bool:
    app = QgsApplication.instance()
    return app is not None and app.platform() == "qgis_process"


def say_once_in_qgis_process(message: str) -> None:
    """Mutes QGIS's message log for the rest of a ``qgis_process`` run (see the module docstring)."""
    if not in_qgis_process():
        return
    log = QgsApplication.messageLog()
    if "--json" in QCoreApplication.arguments():
        print(message, file=sys.stderr, flush=True)
    log.blockSignals(True)
    QTimer.singleShot(0, lambda: log.blockSignals(False))  # should the process go on with its event loop


def processing_error(message: str) -> QgsProcessingException:
    say_once_in_qgis_process(message)
    return QgsProcessingException(message)


@contextlib.contextmanager
def engine_errors(names: Mapping[str, str]) -> Iterator[None]:
    """Engine errors a user can fix, and cancels, as ``QgsProcessingException``; ``names`` maps the run's files and
    temporary folders to the words for them (read when the error happens, so it may grow during the run)."""
    try:
        yield
    except QgsProcessingException as exc:
        raise processing_error(str(exc)) from exc
    except (ValueError, OSError) as exc:
        raise processing_error(for_processing(str(exc), names)) from exc
    except Exception as exc:
        from mtp_core.progress import Cancelled  # the engine ran, so it is importable

        if isinstance(exc, Cancelled):
            raise processing_error("Cancelled by the user; no output was written.") from exc
        raise
