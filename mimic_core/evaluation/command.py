"""The ``python -m mimic_core evaluate`` command (being written)."""


def add_command(commands) -> None:
    """Register the subcommand on the CLI's subparsers."""
