"""``hil train``: one training run on a board (or digitally), resumable; ends with a short table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from drivers.errors import BoardError
from hil.cli.app import cli, fail, failed, stopped
from hil.interruptions import resume_command, sigint_guard
from hil.update_rules import RULES

TRAIN_OPTIONS = ("task", "method", "epochs", "seed", "calibration", "batch_size", "lr", "hidden",
                 "optimizer", "k", "lr_schedule", "allow_foreign_calibration")


@cli.command()
@click.option("--board", "address", default="emu", show_default=True,
              help="Board address (unused by --method float). With --resume: any address of the run's board.")
@click.option("--task", type=click.Choice(["digits", "digits-small", "denoise", "superres"]), default="digits",
              show_default=True, help="digits-small: 4x4 pooled digits, for small benches.")
@click.option("--method", type=click.Choice(list(RULES)), default="eapu", show_default=True,
              help="bp: every update written as asked (whole pulses + one width-modulated pulse); "
                   "bp-pulses: every update rounded to whole pulses (at least one).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False),
              help="calibration.json to use; without it the board is calibrated first.")
@click.option("--allow-foreign-calibration", is_flag=True,
              help="Accept a --calibration measured on another board (recorded in the run).")
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--hidden", default=None, help="Hidden layer sizes, e.g. 32 or 64,32.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=None)
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None,
              help="The learning rate over the run (default: the task's).")
@click.option("--k", type=click.FloatRange(min=0, min_open=True), default=None, help="EaPU threshold factor k.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out (or start it again if it "
                                             "stopped before its first checkpoint).")
@click.option("--assume-applied/--assume-not-applied", "assume_applied", default=None,
              help="With --resume on a board without durable pulse tags (VISA), when the read-back cannot tell: "
                   "the pulses of the interrupted step did (not) reach the devices.")
@click.option("--allow-code-change", is_flag=True,
              help="With --resume: continue a run checkpointed by other code (another source fingerprint) under "
                   "this code; recorded in the run (summary.json earlier_source_fingerprints).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole summary as JSON instead of the table.")
@click.pass_context
def train(ctx: click.Context, address, task, method, epochs, seed, out_dir, calibration, allow_foreign_calibration,
          batch_size, lr, hidden, optimizer, k, lr_schedule, resume, assume_applied, allow_code_change, quiet,
          as_json) -> None:
    """Train a network on the array (or digitally, --method float); writes the run directory."""
    from pydantic import ValidationError

    from hil.exactly_once import UndecidedBatch
    from hil.train import CodeChanged, Interrupted, TrainConfig, load_config_for_resume
    from hil.train import train as run_training

    try:
        sizes = None if hidden is None else [int(h) for h in str(hidden).split(",") if h.strip()]
    except ValueError:
        fail(f"--hidden expects layer sizes like 32 or 64,32; got {hidden!r}")
    if sizes is not None and (not sizes or min(sizes) < 1):
        fail(f"--hidden expects layer sizes of at least 1, like 32 or 64,32; got {hidden!r}")
    values = {"board": address, "task": task, "method": method, "epochs": epochs, "seed": seed,
              "calibration": calibration, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
              "delta_g_th_k": k, "lr_schedule": lr_schedule, "hidden": sizes, "allow_foreign_calibration": allow_foreign_calibration or None}
    typed = {n for n in (*TRAIN_OPTIONS, "address")
             if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
    started = (out_dir / "config.json").exists()
    if assume_applied is not None and not resume:
        fail("--assume-applied / --assume-not-applied only apply to --resume (the pending step of an interrupted run)")
    if allow_code_change and not resume:
        fail("--allow-code-change only applies to --resume (a run checkpointed by other code)")
    try:
        with sigint_guard():
            if resume:
                cfg = load_config_for_resume(out_dir, board=address if "address" in typed else None)
                field = {"k": "delta_g_th_k"}
                changed = [n for n in typed - {"address"} if values.get(field.get(n, n)) not in
                           (None, getattr(cfg, field.get(n, n)))]
                if changed:
                    fail(f"--resume continues the run as configured in {out_dir}/config.json; "
                          f"drop or correct {', '.join('--' + c.replace('_', '-') for c in sorted(changed))}")
            else:
                if started and (out_dir / "summary.json").exists():
                    fail(f"{out_dir} holds a finished run: choose another --out")
                if started:
                    again = resume_command(ctx, keep={"out_dir", "address", "quiet"})
                    fail(f"{out_dir} holds an interrupted run: continue it with: {again} (or choose another --out)")
                cfg = TrainConfig(**{key: v for key, v in values.items() if v is not None})
            summary = run_training(cfg, out_dir, resume=resume, progress=not quiet, limits=ctx.obj.limits,
                                   assume_applied=assume_applied, allow_code_change=allow_code_change)
    except Interrupted as exc:
        stopped(ctx, str(exc), out_dir)
    except KeyboardInterrupt:
        stopped(ctx, "interrupted", out_dir if (out_dir / "config.json").exists() else None)
    except BoardError as exc:
        failed(ctx, str(exc), (out_dir / "config.json").exists())
    except CodeChanged as exc:
        fail(f"{exc}: {resume_command(ctx)} --allow-code-change")
    except UndecidedBatch as exc:
        fail(f"{exc}: {resume_command(ctx)} --assume-applied (or --assume-not-applied)")
    except (ValueError, ValidationError) as exc:
        fail(str(exc))
    except OSError as exc:
        failed(ctx, f"cannot write the run directory {out_dir}: {exc}", (out_dir / "config.json").exists())
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    from hil.run_summary import summary_table

    click.echo(summary_table(summary, out_dir / "summary.json"))
