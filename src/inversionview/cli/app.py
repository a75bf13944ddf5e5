"""The ``inversionview`` Typer app that every command group adds its commands to."""

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Read what a neural activation encodes from its epsilon-preimage.")
