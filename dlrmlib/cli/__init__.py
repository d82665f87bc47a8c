"""`dlrm`: the command line, one subcommand per workflow step (see main.py)."""
from dlrmlib.cli.main import main

__all__ = ["main"]
