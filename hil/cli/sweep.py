"""``hil sweep``: the points of a sweep spec on Ray, then their comparison (docs/SWEEPS.md)."""

from __future__ import annotations

from pathlib import Path

import click

from hil.cli.app import cli, fail, failed, stopped
from hil.interruptions import resume_command, sigint_guard


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Sweep folder: sweep.json, runs/POINT/ (ordinary run folders), calibrations/, the table and figures.")
@click.option("--address", default=None,
              help="Ray cluster to run on (auto, HOST:6379, ray://HOST:10001); default: an embedded local Ray.")
@click.option("--num-cpus", type=click.IntRange(1), default=None,
              help="CPUs of the embedded local Ray (default: the machine's).")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out: finished points are kept, interrupted "
                                             "ones resume from their checkpoints, failed ones run again.")
@click.option("--keep-stale", is_flag=True,
              help="With --resume: keep points and calibrations made by other code (another source fingerprint) "
                   "instead of setting them aside in DIR/superseded/ and making them again; the comparison then "
                   "says it mixes code versions.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def sweep(ctx: click.Context, spec: Path, out_dir: Path, address: str | None, num_cpus: int | None, resume: bool,
          keep_stale: bool, quiet: bool) -> None:
    """Run the points of a sweep SPEC (TOML: base settings and axes) on Ray; then compare them (docs/SWEEPS.md).

    With a [tune] table: choose among the axes' combinations on tuning seeds, then run the chosen one on
    evaluation seeds (DIR/tune.json, DIR/tune.md)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        fail("hil sweep runs on Ray: pip install 'memristor-hil[sweep]' (or pip install ray)")
    from hil.sweep_engine import SweepError, run_sweep
    from hil.sweep_report import load_sweep, write_report
    from hil.sweep_spec import SpecError

    try:
        with sigint_guard():
            result = run_sweep(spec, out_dir, address=address, resume=resume, num_cpus=num_cpus,
                               limits=ctx.obj.limits, progress=not quiet, echo=lambda t: click.echo(t, err=True),
                               keep_stale=keep_stale)
    except KeyboardInterrupt:
        stopped(ctx, "interrupted", out_dir if (out_dir / "sweep.json").exists() else None)
    except (SpecError, SweepError) as exc:
        fail(str(exc))
    except OSError as exc:
        failed(ctx, f"cannot write the sweep folder {out_dir}: {exc}", (out_dir / "sweep.json").exists())
    try:
        text, paths = write_report(result.out_dir, load_sweep(result.out_dir))
    except (ValueError, OSError) as exc:
        fail(f"the points ran, but their comparison failed: {exc}")
    click.echo(text)
    for path in paths:
        click.echo(f"plot: {path}")
    if result.failed:
        fail(f"{len(result.failed)} of {len(result.failed) + len(result.done)} points failed (errors in "
              f"{result.out_dir / 'sweep.json'}); run them again with: {resume_command(ctx)}")
