"""The one exception type that reaches users: its message is a complete, one-line explanation."""


class ModpoolError(Exception):
    """Bad input or pool state. The CLI prints the message alone, never a traceback."""
