"""One error type for everything a user can get wrong, so the CLI and notebooks can show a
clear message instead of a traceback from deep inside TVM or ONNX."""


class DlrmError(Exception):
    """A problem with the user's input or environment, with a message that says what is
    wrong, which file, and what was expected."""
