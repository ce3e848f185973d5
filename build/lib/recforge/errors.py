"""The one exception type for user mistakes.

Entry points catch :class:`RecForgeError`, print its message on one line without a traceback and exit
non-zero. Raise it for anything the user can fix (a config key, a file, a column); let programming errors
raise normally so they keep their traceback.
"""


class RecForgeError(Exception):
    """A mistake the user can fix; the message names the key, file or line and says how."""
