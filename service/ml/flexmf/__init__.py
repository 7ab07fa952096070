"""FlexMF models (after LensKit's design): minibatch-trained matrix factorization in PyTorch."""

from service.ml.flexmf.config import FlexMFExplicitConfig, FlexMFImplicitConfig
from service.ml.flexmf.explicit import FlexMFExplicit
from service.ml.flexmf.implicit import FlexMFImplicit

__all__ = ["FlexMFExplicit", "FlexMFExplicitConfig", "FlexMFImplicit", "FlexMFImplicitConfig"]
