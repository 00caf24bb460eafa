"""``ixcdoc view``: an ``extract`` run's records beside their pages, in a browser, no model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ixcdoc.cli.app import app, err, handles_errors
from ixcdoc.cli.options import PasswordOpt, QuietOpt


@app.command()
@handles_errors
def view(
    records: Annotated[
        Path,
        typer.Argument(
            metavar="RECORDS.jsonl|OUT_DIR",
            help="A records file (extract -o), an --out-dir folder or a folder of --ray shards.",
        ),
    ],
    html: Annotated[
        str | None,
        typer.Option(
            "--html",
            metavar="FILE",
            help="Write one self-contained HTML file (images embedded; - for stdout) instead "
            "of serving the page.",
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option("--port", min=0, max=65535, metavar="N", help="Port on 127.0.0.1 (0: any)."),
    ] = 0,
    password: PasswordOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Look at an extract run: each page beside its text and its record, failed pages with
    their errors, search in the text. No model; pages re-rendered from their files when these
    are still there with the same bytes.

    \b
    ixcdoc view scans.jsonl                    # serves the page on 127.0.0.1, prints the address
    ixcdoc view scans-md/ --html scans.html    # one file to mail or archive
    """
    from ixcdoc.viewer import SourceFiles, ViewServer, data_urls, read_run, view_html

    run = read_run(records)
    sources = SourceFiles(run.path, password=password)
    if html is not None:
        data = data_urls(run, sources)
        page = view_html(data)
        if html == "-":
            sys.stdout.write(page)
            sys.stdout.flush()
        else:
            from ixcdoc.outdir import write_atomic

            write_atomic(Path(html), page)
        if not quiet:
            pages = [p for d in data["documents"] for p in d["pages"]]
            shown = sum(1 for p in pages if p["image"])
            where = "stdout" if html == "-" else html
            err.print(
                f"{len(pages)} pages ({shown} with their image) of {len(data['documents'])} "
                f"documents in {where}",
                markup=False,
            )
        return
    server = ViewServer(run, sources, port=port)
    err.print(f"viewing {run.path} at {server.url} (Ctrl-C stops it)", markup=False)
    server.serve_forever()
