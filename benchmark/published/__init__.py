"""DINet's published code, as bench.py's baselines run it on this repository's modules: its layers
(`published_way`) and its inference loop (`published_inference`). The product never imports this package."""
from .inference_loop import published_inference
from .layers import published_way

__all__ = ["published_inference", "published_way"]
