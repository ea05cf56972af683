"""geosr for QGIS: a Processing provider running the geosr executable (see metadata.txt)."""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    from .plugin import GeosrPlugin

    return GeosrPlugin(iface)
