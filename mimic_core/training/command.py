"""The ``python -m mimic_core train`` command (being written)."""


def add_command(commands) -> None:
    """Register the subcommand on the CLI's subparsers."""
