"""The error types for bad input at the tool's surface (paths, options, files)."""


class UserError(Exception):
    """Bad input that the user can fix; lesions.py prints its one-line message and exits non-zero."""


class OutputWriteError(UserError, OSError):
    """An output file could not be written (disk full, permissions, a file where a folder
    should be); nothing partial was left behind. An OSError too, for callers that catch those."""
