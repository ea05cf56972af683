"""The geosr Processing provider: two algorithms and the setting that finds geosr."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import CaptionAlgorithm, UpscaleAlgorithm
from .runner import find_executable
from .settings import EXECUTABLE_SETTING

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class GeosrProvider(QgsProcessingProvider):
    def id(self):
        return "geosr"

    def name(self):
        return "geosr"

    def longName(self):  # noqa: N802
        return "geosr super-resolution"

    def icon(self):
        return QIcon(ICON)

    def load(self):
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        try:
            default = find_executable(None)
        except Exception:
            default = ""
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(self.name(), EXECUTABLE_SETTING, "geosr executable (in its own environment)",
                                            default, valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self):  # noqa: N802
        self.addAlgorithm(UpscaleAlgorithm())
        self.addAlgorithm(CaptionAlgorithm())

