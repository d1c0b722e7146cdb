"""Domain exceptions. Every module raises these; `app/errors.py` maps them to HTTP codes
and the training CLI turns them into a one-line message and a non-zero exit."""


class DeepLenseError(Exception):
    """Base class of every error this project raises on purpose (bad input, bad files)."""


class InvalidImageError(DeepLenseError):
    """An image file cannot be used: unknown format, corrupt, wrong shape, NaN, constant..."""

    def __init__(self, filename: str, problem: str) -> None:
        self.filename = filename
        self.problem = problem
        super().__init__(f"{filename}: {problem}")


class ImageTooLargeError(InvalidImageError):
    """An image has more pixels than the configured cap (checked before decoding)."""


MAX_ECHOED_NAME = 64  # characters of a caller's unknown name echoed back in a message


class UnknownModelError(DeepLenseError):
    """A model name that is not registered or not loaded; the message lists valid names."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        shown = name if len(name) <= MAX_ECHOED_NAME else name[:MAX_ECHOED_NAME] + "..."
        super().__init__(f"unknown model {shown!r}; valid models: {', '.join(sorted(valid))}")


class CheckpointError(DeepLenseError):
    """A checkpoint folder is missing, malformed or does not match its architecture."""


class DatasetError(DeepLenseError):
    """A dataset folder is missing, malformed, or would be overwritten without --overwrite."""


class OutputExistsError(DeepLenseError):
    """An output exists already and --overwrite was not given."""


class PayloadTooLargeError(DeepLenseError):
    """An upload exceeds a byte or file-count limit; the message names the limit."""


class NotReadyError(DeepLenseError):
    """The service has not finished loading and warming up its models."""


class DeviceError(DeepLenseError):
    """A requested torch device is unknown or not available on this machine."""


class UnknownScoreError(DeepLenseError):
    """A score name that is not registered; the message lists the valid ones."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"unknown score {name!r}; valid scores: {', '.join(sorted(valid))}")


class ScoreNotOfferedError(DeepLenseError):
    """A registered score that a model cannot draw (one drawn by another model's fit); the
    message lists the model's scores."""

    def __init__(self, name: str, model: str, offered: list[str]) -> None:
        self.name = name
        self.model = model
        self.offered = offered
        super().__init__(
            f"model {model!r} cannot draw score {name!r} (it is drawn by the fit of a model "
            f"that offers it); this model's scores: {', '.join(offered)}"
        )


class UncalibratedScoreError(DeepLenseError):
    """A score a model (or every ensemble member) has no calibration for, where one is needed."""


class InvalidInstrumentError(DeepLenseError):
    """A pixel scale, PSF or noise map that cannot be used; says what was wrong."""
