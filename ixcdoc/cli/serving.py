"""``ixcdoc serve``: the model behind an OpenAI-compatible HTTP API (docs/serve.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from ixcdoc.cli.app import app, err, handles_errors
from ixcdoc.cli.options import (
    BatchOpt,
    DeviceOpt,
    MaxPixelsOpt,
    ModelOpt,
    Quant,
    QuantOpt,
    QuietOpt,
    RunOptions,
)
from ixcdoc.cli.running import load_model
from ixcdoc.errors import UsageError

# ---- serve ---------------------------------------------------------------------------------


@app.command()
@handles_errors
def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host", metavar="ADDR", help="Address to bind; anything but loopback needs a key."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="N", help="Port (0: any free one).")
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="IXCDOC_API_KEY",
            metavar="KEY",
            help="Require 'Authorization: Bearer KEY'.",
        ),
    ] = None,
    allow_urls: Annotated[
        bool,
        typer.Option("--allow-urls", help="Fetch http(s) image URLs (a server-side request)."),
    ] = False,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, metavar="N", help="Waiting requests before 429.")
    ] = 64,
    max_body_mb: Annotated[
        float,
        typer.Option("--max-body-mb", min=0.001, metavar="MB", help="Largest request body (413)."),
    ] = 20.0,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            metavar="NAME",
            help="Name in /v1/models [default: the hub id or folder].",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            metavar="N",
            help="Largest max_tokens a request may ask for (400 above); smaller engine slots "
            "[default: up to the position limit].",
        ),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Let browser pages of this origin call the API, e.g. http://localhost:3000 "
            "(repeatable; none by default).",
        ),
    ] = None,
    batch_size: BatchOpt = "auto",
    max_pixels: MaxPixelsOpt = None,
    quant: QuantOpt = Quant.auto,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Serve the model: an OpenAI-compatible HTTP API and a web page, on one address.

    The API is /v1/chat/completions; the page is at / (http://127.0.0.1:8000/ by default).

    \b
    ixcdoc serve --port 8000
    ixcdoc serve --host 0.0.0.0 --api-key "$KEY"
    ixcdoc serve --batch-size 1          # one request at a time, no batched engine
    ixcdoc serve --cors-origin http://localhost:3000   # a browser-side client (Open WebUI)
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        err.print("ixcdoc serve needs: pip install 'ixcdoc[serve]'", markup=False)
        raise typer.Exit(1) from None
    from ixcdoc.serve.cors import check_origin
    from ixcdoc.serve.guard import check_api_key
    from ixcdoc.serve.server import is_loopback
    from ixcdoc.serve.server import serve as run_server

    if not is_loopback(host) and not api_key:
        raise UsageError(
            f"--host {host} makes the server reachable from other machines: set --api-key "
            "(or IXCDOC_API_KEY) as well"
        )
    check_api_key(api_key)  # before the model loads: a key no client can send is a usage error
    origins = [check_origin(o) for o in cors_origins or ()]
    run = RunOptions(model=model, device=device, quant=quant, quiet=quiet, batch_size=batch_size)
    slots = run.slots
    dm = load_model(run, lines=True)
    run_server(
        dm,
        host=host,
        port=port,
        api_key=api_key,
        announce=lambda url: err.print(f"listening on {url}", markup=False),  # even with --quiet
        progress=None if quiet else lambda line: err.print(line, markup=False),
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        allow_urls=allow_urls,
        model_name=model_name,
        batch_size=slots,
        max_tokens=max_tokens,
        cors_origins=origins,
    )
