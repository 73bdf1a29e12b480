"""The error types for bad input at the tool's surface (paths, options, files)."""


class UserError(Exception):
    """Bad input that the user can fix; lesions.py prints its one-line message and exits non-zero."""


class SubmissionError(ValueError):
    """A submission or ground-truth file breaks the official ISIC format."""
