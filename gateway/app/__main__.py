"""`python -m gateway.app`: the `gateway` command."""

from gateway.app.cli import app

app()
