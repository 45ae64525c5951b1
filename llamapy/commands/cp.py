from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("cp")
    def cp(src: str = typer.Argument(..., help="A stored model."),
           dst: str = typer.Argument(..., help="Its new name.")):
        """Give a stored model another name (the data is shared, not copied)."""
        from ..store.store import Store

        a, b = Store().copy(src, dst)
        typer.echo(f"copied '{a}' to '{b}'")
