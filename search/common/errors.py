"""Exceptions meant for people: the CLI prints their message on one line and exits 2."""


class SearchError(Exception):
    """Base of every error a user can fix; its message names the bad value and the fix."""


class ConfigError(SearchError):
    """A command-line option or config value is invalid."""


class TaskError(SearchError):
    """A task could not be loaded or does not behave like a Task."""


class StudyError(SearchError):
    """The study cannot be opened or resumed as asked."""


class TrackingError(SearchError):
    """The MLflow tracking store cannot be reached or written."""


class ExportError(SearchError):
    """The model cannot be written to the deployed format (an ONNX file)."""
