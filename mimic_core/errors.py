"""Errors the engine raises. Each message names the problem and what the user can do about it."""


class MimicBrushError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelFileError(MimicBrushError):
    """A model file is missing, unreadable, unsafe, or not the model it should be."""


class InputError(MimicBrushError, ValueError):
    """An image, mask or option handed to the engine cannot be used as given."""


class EditInterrupted(MimicBrushError):
    """The caller asked to stop between two denoising steps."""
