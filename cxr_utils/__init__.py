"""cxr_utils: synthetic chest X-rays with GANs, and whether they help a classifier."""

from .errors import ConfigError, CXRError, DataError, RunError

__version__ = "0.1.0"
__all__ = ["CXRError", "ConfigError", "DataError", "RunError", "__version__"]
