"""The two Processing algorithms: "Super-resolve raster" and "Caption raster tiles".

Each builds a ``geosr`` command line from its parameters (they mirror the CLI), runs it
with :func:`runner.run_geosr` and loads what it wrote: the COG as a raster layer (its
default renderer), the captions sidecar as a vector layer labelled with the caption.
"""

import os
import shlex

from qgis.core import (
    QgsFillSymbol,
    QgsPalLayerSettings,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
    QgsSingleSymbolRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .runner import GeosrCanceled, GeosrFailed, run_geosr
from .settings import executable

SCALES = ["2", "3", "4", "8"]
ROUTES = ["auto", "off"]
LR_CONSISTENCY = ["off", "clean", "always"]

# Processing keeps a reference to a post-processor only while it runs it: hold them here
_post_processors = []


class LabelCaptions(QgsProcessingLayerPostProcessorInterface):
    """Style the captions layer: tile outlines, each labelled with its caption."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        symbol = QgsFillSymbol.createSimple({"color": "0,0,0,0", "outline_color": "255,221,0",
                                             "outline_width": "0.4"})
        layer.setRenderer(QgsSingleSymbolRenderer(symbol))
        text = QgsTextFormat()
        text.setSize(8)
        text.setColor(QColor("black"))
        buffer = QgsTextBufferSettings()
        buffer.setEnabled(True)
        buffer.setSize(1)
        buffer.setColor(QColor("white"))
        text.setBuffer(buffer)
        label = QgsPalLayerSettings()
        label.fieldName = "caption"
        label.enabled = True
        label.setFormat(text)
        layer.setLabeling(QgsVectorLayerSimpleLabeling(label))
        layer.setLabelsEnabled(True)
        layer.triggerRepaint()


def _load_captions(path, name, context, output_name):
    """Load a captions GeoJSON into the project when the algorithm completes, labelled."""
    details = QgsProcessingContext.LayerDetails(name, context.project(), output_name)
    post = LabelCaptions()
    _post_processors.append(post)
    details.setPostProcessor(post)
    context.addLayerToLoadOnCompletion(path, details)


def _captions_path(output):
    """``out.tif`` -> ``out.captions.geojson`` (geosr's sidecar name)."""
    return os.path.splitext(output)[0] + ".captions.geojson"


class _GeosrAlgorithm(QgsProcessingAlgorithm):
    """Parameters and running shared by both algorithms."""

    INPUT, CAPTIONER, CAPTION_EVERY, TILE, OVERLAP, BANDS, RGB_BANDS, AOI = (
        "INPUT", "CAPTIONER", "CAPTION_EVERY", "TILE", "OVERLAP", "BANDS", "RGB_BANDS", "AOI")

    def group(self):
        return ""

    def groupId(self):  # noqa: N802
        return ""

    def createInstance(self):  # noqa: N802
        return type(self)()

    def _advanced(self, parameter):
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(parameter)

    def _add_tiling_parameters(self):
        self.addParameter(QgsProcessingParameterString(
            self.CAPTIONER, "Captioner (auto, degradation, mllm:MODEL, fixed:TEXT or none)", defaultValue="auto"))
        self._advanced(QgsProcessingParameterString(
            self.CAPTION_EVERY, "Caption every (tile, window:N or scene)", defaultValue="tile"))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE, "Tile size (input pixels)", QgsProcessingParameterNumber.Integer, 256, minValue=8))
        self.addParameter(QgsProcessingParameterNumber(
            self.OVERLAP, "Tile overlap (input pixels on each side)", QgsProcessingParameterNumber.Integer, 16,
            minValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands (e.g. 1,2,3; empty: all but alpha)", optional=True))
        # the captioner reads R, G, B: a B2,B3,B4 stack's are 3,2,1 (both algorithms)
        self._advanced(QgsProcessingParameterString(
            self.RGB_BANDS, "Red, green, blue bands (e.g. 3,2,1; empty: read from the raster's band names)",
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, "Area of interest (polygons; only tiles touching them)", [QgsProcessing.TypeVectorPolygon],
            optional=True))

    def _inputs(self, parameters, context):
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException("no input raster given")
        paths = []
        for layer in layers:
            path = layer.source().split("|")[0]
            if layer.providerType() != "gdal" or not os.path.isfile(path):
                raise QgsProcessingException(f"{layer.name()}: geosr reads raster files; save the layer to a GeoTIFF first")
            paths.append(path)
        return paths

    def _tiling_args(self, parameters, context, feedback):
        args = ["--captioner", self.parameterAsString(parameters, self.CAPTIONER, context) or "auto",
                "--caption-every", self.parameterAsString(parameters, self.CAPTION_EVERY, context) or "tile",
                "--tile", str(self.parameterAsInt(parameters, self.TILE, context)),
                "--overlap", str(self.parameterAsInt(parameters, self.OVERLAP, context))]
        bands = self.parameterAsString(parameters, self.BANDS, context).strip()
        if bands:
            args += ["--bands", bands]
        rgb_bands = self.parameterAsString(parameters, self.RGB_BANDS, context).strip()
        if rgb_bands:
            args += ["--rgb-bands", rgb_bands]
        if parameters.get(self.AOI):
            # geosr reads GeoJSON: QGIS converts any other polygon source (and selections) to it
            aoi = self.parameterAsCompatibleSourceLayerPath(parameters, self.AOI, context, ["geojson"], "geojson",
                                                            feedback)
            args += ["--aoi", aoi]
        return args

    def _run(self, args, feedback):
        try:
            run_geosr(executable(), args, feedback)
        except GeosrCanceled as exc:
            feedback.reportError(str(exc))
            raise QgsProcessingException(str(exc)) from None
        except GeosrFailed as exc:
            raise QgsProcessingException(str(exc)) from None


def _split_options(text: str) -> list[str]:
    """The "More options" text as a shell splits it (``--captioner "fixed:no blur; no noise"`` is
    one value); on Windows backslashes are path separators, not escapes."""
    try:
        if os.name != "nt":
            return shlex.split(text)
        return [part[1:-1] if len(part) > 1 and part[0] == part[-1] and part[0] in "\"'" else part
                for part in shlex.split(text, posix=False)]
    except ValueError as exc:  # an unbalanced quote
        raise QgsProcessingException(f"More options: {exc}: {text}") from None


class UpscaleAlgorithm(_GeosrAlgorithm):
    """geosr upscale: a COG on the refined grid, and its tile captions."""

    SCALE, MODEL, ROUTE, RESUME, DEVICE, EXTRA, OUTPUT, ROUTE_MAP, CAPTIONS = (
        "SCALE", "MODEL", "ROUTE", "RESUME", "DEVICE", "EXTRA", "OUTPUT", "ROUTE_MAP", "CAPTIONS")
    DETAIL, UNCERTAINTY, LR_CONSISTENCY = "DETAIL", "UNCERTAINTY", "LR_CONSISTENCY"
    BANDS_TO_MODEL = "BANDS_TO_MODEL"

    def name(self):
        return "upscale"

    def displayName(self):  # noqa: N802
        return "Super-resolve raster"

    def shortHelpString(self):  # noqa: N802
        return ("Super-resolves a raster (or a mosaic of same-grid rasters) with geosr: tiles are captioned, "
                "upscaled by the model and blended into a Cloud Optimized GeoTIFF on the input grid refined "
                "SCALE times (same CRS and bounds). The tile captions are loaded as a labelled vector layer. "
                "Detail level: 0 is the fidelity output, 1 the most (invented, plausible) detail the model has "
                "learnt. Predicted error: a float32 raster on the output grid, the predicted RMS error of each "
                "output pixel in its DN (no routing then). "
                "Cancel stops geosr cleanly; with 'Resume' on, running again continues where it stopped.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, "Input raster(s)", QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterEnum(self.SCALE, "Scale", options=SCALES, defaultValue=2))
        self.addParameter(QgsProcessingParameterString(
            self.MODEL, "Model (empty: the shipped model of the scale; bicubic, lanczos, nearest, a folder or hub id, or your own .onnx / .pt network)",
            optional=True))
        self._add_tiling_parameters()
        self.addParameter(QgsProcessingParameterString(
            self.BANDS_TO_MODEL, "Bands through the model (all; rgb: R, G, B only, the rest bicubic; or e.g. 4,5,6)",
            defaultValue="all"))
        self.addParameter(QgsProcessingParameterNumber(
            self.DETAIL, "Detail level (0: fidelity; 1: the most detail the model has learnt, drawn, not measured)",
            QgsProcessingParameterNumber.Double, 0.0, minValue=0.0, maxValue=1.0))
        self._advanced(QgsProcessingParameterEnum(
            self.LR_CONSISTENCY, "Make the output reproduce the input when downsampled (off; clean: tiles "
            "captioned as a clean downsample; always: only for an input that IS such a downsample)",
            options=LR_CONSISTENCY, defaultValue=0))
        self.addParameter(QgsProcessingParameterEnum(
            self.ROUTE, "Texture-aware routing (flat, clean tiles to the fast network of the scale, or bicubic)", options=ROUTES, defaultValue=0))
        self._advanced(QgsProcessingParameterBoolean(
            self.RESUME, "Resume a stopped run of the same output", defaultValue=True))
        self._advanced(QgsProcessingParameterString(self.DEVICE, "Torch device (e.g. cpu, cuda)", optional=True))
        self._advanced(QgsProcessingParameterString(
            self.EXTRA, "More geosr upscale options (e.g. --steps 2 --co COMPRESS=ZSTD)", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Super-resolved raster"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.ROUTE_MAP, "Route map (one pixel per tile)", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.UNCERTAINTY, "Predicted error (RMSE in output DN; every tile on the model)", optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputVectorLayer(self.CAPTIONS, "Tile captions", QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        scale = SCALES[self.parameterAsEnum(parameters, self.SCALE, context)]
        args = ["upscale", *self._inputs(parameters, context), output, "--scale", scale, "--overwrite",
                "--route", ROUTES[self.parameterAsEnum(parameters, self.ROUTE, context)]]
        model = self.parameterAsString(parameters, self.MODEL, context).strip()
        if model:
            args += ["--model", model]
        args += self._tiling_args(parameters, context, feedback)
        args += ["--bands-to-model", self.parameterAsString(parameters, self.BANDS_TO_MODEL, context).strip() or "all"]
        if self.parameterAsBool(parameters, self.RESUME, context):
            args.append("--resume")
        device = self.parameterAsString(parameters, self.DEVICE, context).strip()
        if device:
            args += ["--device", device]
        route_map = self.parameterAsOutputLayer(parameters, self.ROUTE_MAP, context) if parameters.get(self.ROUTE_MAP) else None
        if route_map:
            args += ["--route-map", route_map]
        detail = self.parameterAsDouble(parameters, self.DETAIL, context)
        if detail:
            args += ["--detail", repr(detail)]
        consistency = LR_CONSISTENCY[self.parameterAsEnum(parameters, self.LR_CONSISTENCY, context)]
        if consistency != "off":
            args += ["--lr-consistency", consistency]
        uncertainty = (self.parameterAsOutputLayer(parameters, self.UNCERTAINTY, context)
                       if parameters.get(self.UNCERTAINTY) else None)
        if uncertainty:
            args += ["--uncertainty", uncertainty]
        args += _split_options(self.parameterAsString(parameters, self.EXTRA, context))
        self._run(args, feedback)
        captions = _captions_path(output)
        _load_captions(captions, "Tile captions", context, self.CAPTIONS)
        results = {self.OUTPUT: output, self.CAPTIONS: captions}
        if route_map:
            results[self.ROUTE_MAP] = route_map
        if uncertainty:
            results[self.UNCERTAINTY] = uncertainty
        return results


class CaptionAlgorithm(_GeosrAlgorithm):
    """geosr caption: the tile footprints and their change captions, as GeoJSON."""

    OUTPUT = "OUTPUT"

    def name(self):
        return "caption"

    def displayName(self):  # noqa: N802
        return "Caption raster tiles"

    def shortHelpString(self):  # noqa: N802
        return ("Captions the tiles of a raster as 'Super-resolve raster' would: how each tile differs from a "
                "clean sharp image (blur, noise, JPEG). Writes tile footprints with their captions (GeoJSON) "
                "and loads them labelled.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.INPUT, "Input raster(s)", QgsProcessing.TypeRaster))
        self._add_tiling_parameters()
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, "Tile captions", "GeoJSON (*.geojson)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        args = ["caption", *self._inputs(parameters, context), "--out", output, "--overwrite"]
        self._run(args + self._tiling_args(parameters, context, feedback), feedback)
        _load_captions(output, "Tile captions", context, self.OUTPUT)
        return {self.OUTPUT: output}
