"""Drive the geosr QGIS plugin in a real PyQGIS, as QGIS runs it (its own Python, geosr as an executable).

Run with the Python that has ``qgis`` (``/usr/bin/python3`` with ``python3-qgis``)::

    QT_QPA_PLATFORM=offscreen python3 tests/qgis_driver.py GEOSR_EXECUTABLE COMMAND ARGS...

Commands (each prints one JSON line): ``algorithms``; ``upscale INPUT OUTPUT [KEY=VALUE...]``
(runAndLoadResults, then what was loaded into the project); ``caption INPUT OUTPUT [KEY=VALUE...]``; ``fail INPUT OUTPUT KEY=VALUE...``
(the error message); ``cancel INPUT OUTPUT`` (cancel at the first progress);
``screenshots INPUT OUTPUT DIR`` (the algorithm dialog and the loaded layers, as PNGs).
Used by tests/test_qgis_plugin.py.
"""

import json
import os
import sys

from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsProject

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGINS = os.path.join(os.path.dirname(HERE), "qgis_plugin")


def start(gui: bool):
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], gui)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    sys.path.insert(0, PLUGINS)
    from processing.core.Processing import Processing

    Processing.initialize()
    from geosr_qgis.plugin import GeosrPlugin

    plugin = GeosrPlugin()
    plugin.initProcessing()
    from processing.core.ProcessingConfig import ProcessingConfig

    ProcessingConfig.setSettingValue("GEOSR_EXECUTABLE", sys.argv[1])
    return app, plugin


def parameters(inp, out, extra):
    params = {"INPUT": [inp], "SCALE": 0, "OUTPUT": out}
    for item in extra:
        key, _, value = item.partition("=")
        params[key] = int(value) if value.isdigit() else value
    return params


class CancelAtFirstProgress(QgsProcessingFeedback):
    def setProgress(self, progress):  # noqa: N802
        super().setProgress(progress)
        if progress > 0:
            self.cancel()


def main():
    command, args = sys.argv[2], sys.argv[3:]
    app, plugin = start(gui=command == "screenshots")
    import processing

    if command == "algorithms":
        print(json.dumps(sorted(a.id() for a in plugin.provider.algorithms())))
    elif command == "upscale":
        result = processing.runAndLoadResults("geosr:upscale", parameters(args[0], args[1], args[2:]))
        layers = {}
        for layer in QgsProject.instance().mapLayers().values():
            entry = {"type": layer.type(), "source": layer.source(), "valid": layer.isValid()}
            if layer.type() == 1:  # raster
                entry["renderer"] = layer.renderer().type()
            else:
                entry["labels"] = layer.labelsEnabled() and layer.labeling().settings().fieldName
                entry["features"] = layer.featureCount()
                entry["fields"] = [f.name() for f in layer.fields()]
            layers[layer.name()] = entry
        print(json.dumps({"result": {k: str(v) for k, v in result.items()}, "layers": layers}))
    elif command == "caption":
        params = parameters(args[0], args[1], args[2:])
        params.pop("SCALE")
        result = processing.runAndLoadResults("geosr:caption", params)
        layer = next(iter(QgsProject.instance().mapLayers().values()))
        print(json.dumps({"result": {k: str(v) for k, v in result.items()}, "features": layer.featureCount(),
                          "labels": layer.labelsEnabled() and layer.labeling().settings().fieldName,
                          "captions": sorted({f["caption"] for f in layer.getFeatures()})}))
    elif command == "fail":
        try:
            processing.run("geosr:upscale", parameters(args[0], args[1], args[2:]))
            print(json.dumps({"error": None}))
        except QgsProcessingException as exc:
            print(json.dumps({"error": str(exc)}))
    elif command == "cancel":
        feedback = CancelAtFirstProgress()
        try:
            processing.run("geosr:upscale", parameters(args[0], args[1], ["SCALE=2", "TILE=48"]), feedback=feedback)
            print(json.dumps({"error": None, "canceled": feedback.isCanceled()}))
        except QgsProcessingException as exc:
            print(json.dumps({"error": str(exc), "canceled": feedback.isCanceled()}))
    elif command == "screenshots":
        screenshots(processing, *args)
    app.exitQgis()


def screenshots(processing, inp, out, folder):
    """The algorithm dialog, and the output with its captions layer rendered offscreen."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    from qgis.core import QgsRasterLayer

    QgsProject.instance().addMapLayer(QgsRasterLayer(inp, os.path.basename(inp)))
    alg = QgsApplication.processingRegistry().createAlgorithmById("geosr:upscale")
    dialog = AlgorithmDialog(alg)
    dialog.setParameters({"INPUT": [inp], "SCALE": 2, "OUTPUT": out})
    dialog.resize(900, 700)
    dialog.show()
    QgsApplication.processEvents()
    dialog.grab().save(os.path.join(folder, "qgis_dialog.png"))
    dialog.close()

    QgsProject.instance().clear()
    processing.runAndLoadResults("geosr:upscale", parameters(inp, out, []))
    layers = list(QgsProject.instance().mapLayers().values())
    vectors = [lyr for lyr in layers if lyr.type() == 0]
    rasters = [lyr for lyr in layers if lyr.type() == 1]
    settings = QgsMapSettings()
    settings.setLayers(vectors + rasters)  # captions above the raster
    settings.setDestinationCrs(rasters[0].crs())
    settings.setExtent(rasters[0].extent())
    settings.setOutputSize(QSize(1000, 900))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(os.path.join(folder, "qgis_layers.png"))
    print(json.dumps({"layers": [lyr.name() for lyr in layers]}))


if __name__ == "__main__":
    main()
