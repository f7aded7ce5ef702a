"""``python -m pairsr``: the command-line interface."""

from pairsr.cli import app

app(prog_name="pairsr")
