from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("rm")
    def rm(names: list[str] = typer.Argument(..., help="Models to remove.")):
        """Remove models from the local store (blobs no other model uses go too)."""
        from ..store.store import Store

        store = Store()
        for name in names:
            typer.echo(f"deleted '{store.remove(name)}'")
