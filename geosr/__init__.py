"""geosr: text-guided diffusion super-resolution for large georeferenced rasters."""

__version__ = "0.1.0"
