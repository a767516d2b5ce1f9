"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class MimicBrushError(Exception):
    """Base class: anything the user can fix (bad input, missing weights, bad config)."""


class InputError(MimicBrushError, ValueError):
    """An image, mask, box or option the user gave cannot be used."""


class WeightsError(MimicBrushError):
    """A model folder or weight file is missing, unsafe, or does not match the architecture."""


class ConfigError(MimicBrushError, ValueError):
    """A YAML config does not follow the documented schema."""
