"""Training of geosr's models: degradations, datasets, contrastive ControlNet, CFG distillation.

Imported as ``geosr.training``.
"""
