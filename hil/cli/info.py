"""``hil info``: identity, geometry, capabilities and effective limits of a board."""

from __future__ import annotations

import json

import click

from drivers.errors import BoardError
from hil.cli.app import cli, fail, open_for
from protocols.version import software_version


@cli.command()
@click.option("--board", "address", required=True, help="Board address, e.g. emu, serial:/dev/ttyUSB0.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def info(ctx: click.Context, address: str, as_json: bool) -> None:
    """Identity, geometry, capabilities and limits of a board."""
    try:
        with open_for(ctx, address) as board:
            eff = board.effective_limits
            data = {"software_version": software_version(), "address": address,
                    "info": board.info.model_dump(mode="json"),
                    "effective_limits": eff.limits.model_dump(), "limit_sources": dict(eff.sources),
                    "limits_refused": {k: {"asked": a, "used": u} for k, (a, u) in eff.refused.items()},
                    "status": board.status().model_dump()}
    except BoardError as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    i = data["info"]
    click.echo(f"board        {address}")
    click.echo(f"identity     {i['name']} (serial {i['serial_number']}), kind {i['kind']}")
    click.echo(f"firmware     {i['firmware_version']}, protocol v{i['protocol_version']}")
    if i.get("device_preset"):
        override = f", fields overridden by {i['device_config']}" if i.get("device_config") else ""
        click.echo(f"device       preset {i['device_preset']}{override}")
    click.echo(f"geometry     {i['rows']} x {i['cols']} devices")
    caps = [k for k, v in i["capabilities"].items() if v]
    click.echo(f"capabilities {', '.join(caps) or 'none'}")
    click.echo(f"read         {i['read_voltage_v']} V, LSB {i['g_lsb_s']:.3g} S, full scale {i['g_full_scale_s']:.3g} S")
    if i["capabilities"]["vmm"]:
        click.echo(f"converters   DAC {i['dac_bits']} bit (+-{i['dac_full_scale_v']} V), ADC {i['adc_bits']} bit")
    click.echo("limits       effective value, set by (user: --limits file, default: built-in user default, "
               "hardware: the board)")
    hw = i["hardware_limits"]
    for k, v in data["effective_limits"].items():
        src = data["limit_sources"][k]
        note = f"  (hardware allows {hw[k]:g})" if src != "hardware" and hw[k] != v else ""
        if k in data["limits_refused"]:
            note = f"  (--limits asked {data['limits_refused'][k]['asked']:g}: beyond the hardware, not used)"
        click.echo(f"  {k:22s} {v:<10g} {src}{note}")
    click.echo(f"clock        {data['status']['clock_sec']:.6g} s")
