from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("show")
    def show(
        name: str = typer.Argument(..., help="A stored model."),
        modelfile: bool = typer.Option(False, "--modelfile", help="Its Modelfile."),
        parameters: bool = typer.Option(False, "--parameters", help="Its parameters."),
        template: bool = typer.Option(False, "--template", help="Its template."),
        system: bool = typer.Option(False, "--system", help="Its system message."),
        license_: bool = typer.Option(False, "--license", help="Its license."),
    ):
        """Show a stored model's Modelfile, parameters, template, system message or license (as `ollama show`)."""
        from ..errors import LlamapyError
        from ..store.models import model_settings, render_modelfile, render_parameters
        from ._storeui import printable

        if sum([modelfile, parameters, template, system, license_]) > 1:
            raise LlamapyError("only one of --modelfile, --parameters, --template, --system, --license")
        s = model_settings(name)
        if modelfile:
            out = render_modelfile(s)
        elif parameters:
            out = render_parameters(s.parameters)
        elif template:
            out = s.template or ""
        elif system:
            out = s.system or ""
        elif license_:
            out = "\n".join(s.licenses)
        else:
            out = _summary(s)
        if out:
            typer.echo(printable(out).rstrip("\n"))

    def _summary(s) -> str:
        from ..store.models import render_parameters
        from ._storeui import printable

        lines = ["  Model", f"    {'path':<18}{s.model_path}"]
        try:
            from ..errors import LlamapyError
            from ..info import summarize

            d = summarize(s.model_path, with_tensors=False)
        except LlamapyError:
            d = None
        if d is not None:
            md = d["metadata"]
            arch = md.get("general.architecture")
            from ..ggufio.filetypes import ftype_name

            facts = [("architecture", arch), ("parameters", f"{d['n_params'] / 1e6:.1f}M"),
                     ("quantization", _ftype_name(ftype_name, md.get("general.file_type"))),
                     ("context length", md.get(f"{arch}.context_length")), ("embedding length",
                                                                            md.get(f"{arch}.embedding_length"))]
            lines += [f"    {k:<18}{printable(str(v))}" for k, v in facts if v is not None]
        if s.parameters:
            lines += ["", "  Parameters"] + ["    " + ln for ln in render_parameters(s.parameters).splitlines()]
        if s.system:
            lines += ["", "  System", "    " + s.system.splitlines()[0]]
        if s.licenses:
            lines += ["", "  License", "    " + s.licenses[0].splitlines()[0]]
        return "\n".join(printable(ln) for ln in lines)


def _ftype_name(name_of, ftype) -> str | None:
    """The file type's short name (Q4_K_M), None when the file names none or one this table lacks."""
    try:
        return name_of(int(ftype)) if ftype is not None else None
    except (KeyError, TypeError, ValueError):
        return None
