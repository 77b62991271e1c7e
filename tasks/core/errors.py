"""The error type for problems a user can fix (bad data, bad params, missing files).

Every stage depends on this module: keep it to the one class, so that editing anything else re-runs less.
"""


class UserError(Exception):
    """Raised with a message that names the problem and how to fix it; stages print it without a traceback."""
