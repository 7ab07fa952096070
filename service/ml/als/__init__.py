"""Alternating least squares: `als-biased` (explicit, damped biases) and `als-implicit` (HKV)."""

from service.ml.als._biased import BiasedALS, BiasedALSConfig
from service.ml.als._implicit import ImplicitALS, ImplicitALSConfig

__all__ = ["BiasedALS", "BiasedALSConfig", "ImplicitALS", "ImplicitALSConfig"]
