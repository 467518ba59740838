"""The MTP Processing provider: the engine's jobs in the toolbox, the batch dialog, the modeler and ``qgis_process``."""
from .provider import MTPProvider

__all__ = ["MTPProvider"]
