"""argparse types of numeric flags with their valid range: a value outside it stops the command before any work,
with argparse's one line naming the flag (`argument --batch_size: must be an integer >= 1, got 0`), exit 2.

    add("--batch_size", type=integer(1))      add("--lr", type=number(above=0))      add("--share", type=number(0, 1))
"""
import argparse
import math


class Bounded:
    """int or float within [minimum, maximum] (or above `above`); floats must also be finite."""

    def __init__(self, kind, minimum=None, maximum=None, above=None):
        self.kind, self.minimum, self.maximum, self.above = kind, minimum, maximum, above
        self.__name__ = kind.__name__  # text that is no number keeps argparse's "invalid int value: 'x'"

    def __contains__(self, value):
        return ((self.kind is int or math.isfinite(value)) and (self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum) and (self.above is None or value > self.above))

    def describe(self):
        kind = "an integer" if self.kind is int else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {self.minimum} to {self.maximum}"
        bounds = ((">", self.above), (">=", self.minimum), ("<=", self.maximum))
        return kind + " " + " and ".join(f"{sign} {bound}" for sign, bound in bounds if bound is not None)

    def __call__(self, text):
        value = self.kind(text)
        if value not in self:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


def integer(minimum=None, maximum=None):
    return Bounded(int, minimum, maximum)


def number(minimum=None, maximum=None, above=None):
    return Bounded(float, minimum, maximum, above)


SEED = integer(0, 2 ** 32 - 1)  # numpy's seeds
