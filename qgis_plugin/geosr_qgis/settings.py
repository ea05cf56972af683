"""Where the provider keeps the geosr executable (Settings > Options > Processing > Providers)."""

from .runner import find_executable

EXECUTABLE_SETTING = "GEOSR_EXECUTABLE"


def executable() -> str:
    """The configured geosr executable (see :func:`runner.find_executable`)."""
    from processing.core.ProcessingConfig import ProcessingConfig

    return find_executable(ProcessingConfig.getSetting(EXECUTABLE_SETTING) or None)
