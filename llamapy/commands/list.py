from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_models():
        """List the models in the local store (NAME, ID, SIZE, MODIFIED, as `ollama list`)."""
        import time

        from ..store.models import format_table, human_bytes, human_time
        from ..store.store import Store

        now = time.time()
        rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
        for e in Store().entries():
            rows.append([str(e.name), e.id, human_bytes(e.size), human_time(now - e.modified)])
        typer.echo(format_table(rows))
