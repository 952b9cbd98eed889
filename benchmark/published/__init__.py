"""DINet's published code, as bench.py's baselines run it on this repository's modules: its layers
(`published_way`, with the 3-D grid_sample warp of models/adaat.py), its training iteration
(`published_iteration`) and its inference loop (`published_inference`). The product never imports this package."""
from .inference_loop import published_inference
from .iteration import published_iteration
from .layers import published_way

__all__ = ["published_inference", "published_iteration", "published_way"]
