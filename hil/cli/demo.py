"""``hil demo``: the main job -- per seed, calibrate and train float, bp and eapu; then compare."""

from __future__ import annotations

from pathlib import Path

import click

from drivers.errors import BoardError
from hil.cli.app import cli, fail, failed, stopped
from hil.interruptions import resume_command, sigint_guard


@cli.command()
@click.option("--board", "address", default="emu", show_default=True,
              help="Board address; an emulator gets its own board seed per seed (emu?seed=S).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-run"),
              show_default=True)
@click.option("--task", type=click.Choice(["digits", "digits-small"]), default="digits", show_default=True,
              help="digits-small fits small boards (e.g. 32x96).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seeds", "seeds_text", default="5", show_default=True,
              help="A count (5: seeds 0-4) or a list of seeds (0-9, 3,7,11).")
@click.option("--resume", is_flag=True, help="Continue an interrupted demo in --out: finished parts are kept, "
                                             "the interrupted one resumes.")
@click.option("--keep-stale", is_flag=True,
              help="With --resume: keep finished parts made by other code (another source fingerprint) instead of "
                   "setting them aside in OUT/superseded/ and making them again; the comparison then says it mixes "
                   "code versions.")
@click.option("--quiet", is_flag=True)
@click.pass_context
def demo(ctx: click.Context, address: str, out_dir: Path, task: str, epochs: int, seeds_text: str, resume: bool,
         keep_stale: bool, quiet: bool) -> None:
    """Per seed: calibrate, train float, bp and eapu; then compare them over the seeds."""
    from hil import compare as cmp
    from hil.demo import DemoPlan, parse_seeds, run_demo
    from hil.plots import plot_comparison
    from hil.train import Interrupted

    try:
        seeds = parse_seeds(seeds_text)
    except ValueError as exc:
        fail(str(exc))
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        fail(f"{out_dir} holds a demo already: continue it with: {resume_command(ctx)} (or choose another --out)")
    plan = DemoPlan(address, out_dir, tuple(seeds), epochs, task)
    try:
        with sigint_guard():
            dirs = run_demo(plan, limits=ctx.obj.limits, progress=not quiet, echo=click.echo, keep_stale=keep_stale)
        groups, ratios = cmp.compare(dirs)
    except Interrupted as exc:
        stopped(ctx, str(exc), out_dir)
    except KeyboardInterrupt:
        stopped(ctx, "interrupted", out_dir)
    except (BoardError, OSError) as exc:
        failed(ctx, str(exc), True)
    except ValueError as exc:
        fail(str(exc))
    click.echo(cmp.table(groups, ratios))
    for path in plot_comparison(groups, out_dir, overwrite=True):
        click.echo(f"plot: {path}")
