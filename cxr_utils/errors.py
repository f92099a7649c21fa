"""Error types whose message is meant for the user: one line, naming the problem.

The CLI catches :class:`CXRError` and prints ``error: <message>`` without a traceback.
"""


class CXRError(Exception):
    """Base class of every user-facing error in cxr_utils."""


class DataError(CXRError, ValueError):
    """A data source cannot be read: missing path, no images, corrupt files, bad options."""


class ConfigError(CXRError, ValueError):
    """A configuration field is unknown or has the wrong type or value."""


class RunError(CXRError, RuntimeError):
    """A run folder is missing, incomplete, or would be overwritten."""
