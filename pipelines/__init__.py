"""diffusers-style inference pipelines of geosr (imported as ``geosr.pipelines``)."""

from geosr.pipelines.lr_space_heads import DetailHead, UncertaintyHead
from geosr.pipelines.lr_space_models import LRSpaceControlNet, LRSpaceDenoiser
from geosr.pipelines.pipeline_geosr import GeoSRPipeline, GeoSRPipelineOutput

__all__ = ["DetailHead", "GeoSRPipeline", "UncertaintyHead", "GeoSRPipelineOutput", "LRSpaceControlNet", "LRSpaceDenoiser"]
