"""diffusers-style inference pipelines of geosr (imported as ``geosr.pipelines``)."""
