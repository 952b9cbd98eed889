"""Networks: the DINet generator (lab-configurable), its discriminators and the VGG19 perceptual network."""
from .adaat import AdaAT
from .dinet import DINet, GeneratorConfig
from .discriminator import Discriminator
from .vgg19 import Vgg19

__all__ = ["AdaAT", "DINet", "GeneratorConfig", "Discriminator", "Vgg19"]
