"""`llamapy ps`: the models a running `llamapy serve` has loaded, as `ollama ps` shows them."""
from __future__ import annotations

import os

import typer

DEFAULT_HOST = "127.0.0.1:8080"  # where `llamapy serve` listens by default


def server_url(host: str | None) -> str:
    """--host, else $LLAMAPY_HOST, else 127.0.0.1:8080, as a base URL (http:// added when missing)."""
    h = (host or os.environ.get("LLAMAPY_HOST") or DEFAULT_HOST).strip().rstrip("/")
    if "://" not in h:
        h = "http://" + h
    scheme, _, rest = h.partition("://")
    if ":" not in rest.rsplit("]", 1)[-1]:
        rest += ":8080"
    return f"{scheme}://{rest}"


def until(expires_at: str, now: float) -> str:
    """Ollama's UNTIL column: "Forever", "Stopping...", or "4 minutes from now"."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return "?"
    if t - now > 100 * 365 * 86400:
        return "Forever"
    if t <= now:
        return "Stopping..."
    from ..store.models import human_time

    return human_time(t - now).replace(" ago", " from now")


def register(app: typer.Typer) -> None:
    @app.command("ps")
    def ps(
        host: str = typer.Option(None, "--host", help="The server: HOST:PORT or a URL (default: $LLAMAPY_HOST, "
                                                      "else 127.0.0.1:8080)."),
        api_key: str = typer.Option(None, "--api-key", envvar="LLAMAPY_API_KEY",
                                    help="The server's API key, if it has one."),
    ):
        """List the models a running `llamapy serve` has loaded (NAME, ID, SIZE, PROCESSOR, UNTIL)."""
        import json
        import time
        import urllib.error
        import urllib.request

        from ..errors import LlamapyError
        from ..store.models import format_table, human_bytes
        from ..util.safe_text import printable

        url = server_url(host) + "/api/ps"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                doc = json.loads(r.read(16 << 20))
        except urllib.error.HTTPError as e:
            raise LlamapyError(f"{url}: HTTP {e.code}" + (" (give --api-key)" if e.code == 401 else "")) from None
        except (urllib.error.URLError, OSError) as e:
            raise LlamapyError(f"can't reach a server at {server_url(host)}: {getattr(e, 'reason', e)} "
                               "(is `llamapy serve` running? --host or LLAMAPY_HOST names it)") from None
        except ValueError:
            raise LlamapyError(f"{url}: the answer is not JSON (is that a llamapy server?)") from None
        now = time.time()
        rows = [["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]]
        for m in (doc.get("models") or []) if isinstance(doc, dict) else []:
            if not isinstance(m, dict):
                continue
            size = m.get("size") if isinstance(m.get("size"), int) else 0
            rows.append([printable(str(m.get("name", "")), 200), printable(str(m.get("digest") or ""))[:12],
                         human_bytes(size), "100% CPU", until(str(m.get("expires_at", "")), now)])
        typer.echo(format_table(rows))
