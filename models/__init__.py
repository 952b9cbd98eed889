"""Networks: the DINet generator (lab-configurable), its discriminators and the VGG19 perceptual network.
models.fast holds what makes a trained generator faster at inference (`optimize_for_inference`)."""
from .adaat import AdaAT
from .dinet import DINet, GeneratorConfig, ReferenceState
from .discriminator import Discriminator
from .vgg19 import Vgg19

__all__ = ["AdaAT", "DINet", "GeneratorConfig", "ReferenceState", "Discriminator", "Vgg19"]
