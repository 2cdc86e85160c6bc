"""omama runtime: torch-free inference, I/O and the official metrics.

Nothing in this package may import torch, ultralytics or timm (a test enforces it).
"""

from runtime.errors import OmamaError

__version__ = "0.1.0"
__all__ = ["OmamaError", "__version__"]
