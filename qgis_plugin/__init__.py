"""QGIS entry point. Imports nothing heavy: the menus load even when torch is missing."""


def classFactory(iface):  # noqa: N802  (name fixed by QGIS)
    from .bootstrap import prepare

    prepare()  # the vendored engine and shapely's own GEOS, before anything imports them
    from .plugin import MTPPlugin

    return MTPPlugin(iface)
