"""Errors a user can fix: run.py prints them as one line instead of a traceback."""


class DenetdmError(Exception):
    """Base class: the message alone must say what went wrong and what to do."""


class ConfigError(DenetdmError):
    """A config value is unknown, out of range or of the wrong type."""


class DataError(DenetdmError):
    """Data is missing, unreadable or malformed."""


class CheckpointError(DenetdmError):
    """A checkpoint is missing, damaged or belongs to another run."""


class BusyError(DenetdmError):
    """Another process is training in the same run directory."""


class TrainingError(DenetdmError):
    """Training cannot go on (for example a non-finite loss)."""


class WriteError(DenetdmError):
    """A file could not be written (a full disk, a size limit, permissions); what was written before is intact."""
