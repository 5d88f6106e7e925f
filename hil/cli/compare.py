"""``hil compare``: finished runs grouped by task x method x board settings, with figures."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hil.cli.app import cli, fail
from protocols.version import software_version


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the groups and ratios as JSON.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the figures (default: the runs' common parent folder).")
@click.option("--overwrite", is_flag=True, help="Replace figures that already exist.")
@click.option("--no-plot", is_flag=True, help="Only the table.")
def compare(run_dirs, as_json: bool, out_dir: Path | None, overwrite: bool, no_plot: bool) -> None:
    """Group finished runs by task x method x board settings: mean ± 95 % CI over seeds, gaps, ratios."""
    import os

    from hil import compare as cmp
    from hil.plots import plot_comparison

    try:
        groups, ratios = cmp.compare(list(run_dirs))
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({"software_version": software_version(), **cmp.to_json(groups, ratios)}, indent=2))
    else:
        click.echo(cmp.table(groups, ratios))
    if no_plot:
        return
    target = out_dir or Path(os.path.commonpath([str(Path(d).resolve().parent) for d in run_dirs]))
    try:
        target.mkdir(parents=True, exist_ok=True)
        paths = plot_comparison(groups, target, overwrite=overwrite)
    except FileExistsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the figures to {target}: {exc}")
    for p in paths:
        click.echo(f"plot: {p}", err=as_json)
