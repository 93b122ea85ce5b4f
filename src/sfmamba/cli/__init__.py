"""The `sfmamba` command line (`sfmamba.cli.main:main`); one module per subcommand."""


class UsageError(Exception):
    """A bad command-line request found after parsing; `main` reports it like an argparse error (exit status 2)."""
