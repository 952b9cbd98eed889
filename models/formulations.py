"""The training-side reformulations and their plain fallbacks, one switch each.

Two layers compute DINet's function another way because it pays in training too:
    UpBlock2d.transposed = True        one transposed convolution   (plain: interpolate, then the 3x3 convolution)
    AdaAT.implementation = "channel_pair"  a channel blend and a 2-D sample  (plain: "published", a 3-D grid_sample)
FLOPs are counted with the plain fallbacks selected, so that a network's count is DINet's however it runs.
"""
from contextlib import contextmanager

from .adaat import AdaAT
from .blocks import UpBlock2d

PLAIN = ((UpBlock2d, "transposed", False), (AdaAT, "implementation", "published"))


def _switches(networks):
    return [(module, name, value) for network in networks for module in network.modules()
            for kind, name, value in PLAIN if isinstance(module, kind)]


def use_plain_formulations(*networks):
    """Select the plain fallback of every reformulated layer of the networks (in place)."""
    for module, name, value in _switches(networks):
        setattr(module, name, value)


@contextmanager
def plain_formulations(*networks):
    """Within it, the networks' reformulated layers run their plain fallbacks; afterwards, as they were."""
    switches = _switches(networks)
    before = [getattr(module, name) for module, name, _ in switches]
    use_plain_formulations(*networks)
    try:
        yield
    finally:
        for (module, name, _), value in zip(switches, before):
            setattr(module, name, value)
