"""Which code made a result (``source_fingerprint``, protocols/provenance.py), as a user meets it: a resume
under changed code is refused or recorded, a demo remakes what older code made (or keeps it knowingly, and
the comparison says so), and files written before fingerprints were recorded still load.

A change of the code is simulated by patching the fingerprint in-process, or by editing the fingerprint a
finished run recorded (older code made it): nothing else can change it in a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hil.cli import cli
from protocols import provenance

OTHER = "0123456789ab"
FLOAT_RUN = ["--method", "float", "--task", "digits-small", "--hidden", "16", "--epochs", "1", "--quiet"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _restamp(path: Path, fingerprint: str | None) -> None:
    """Make the file look written by other code (``None``: before fingerprints were recorded)."""
    data = json.loads(path.read_text())
    if fingerprint is None:
        data.pop("source_fingerprint", None)
    else:
        data["source_fingerprint"] = fingerprint
    path.write_text(json.dumps(data))


@pytest.fixture
def interrupted(tmp_path):
    """A float run stopped after its checkpoint at step 25 (an observer's error ends it, as a crash would)."""
    from hil.train import TrainConfig, train

    def stop(record):
        if record.get("step", 0) >= 30:
            raise RuntimeError("stopped")

    out = tmp_path / "run"
    cfg = TrainConfig(method="float", task="digits-small", hidden=[16], epochs=1)
    with pytest.raises(RuntimeError):
        train(cfg, out, progress=False, on_record=stop)
    assert (out / "checkpoint.json").is_file() and not (out / "summary.json").exists()
    return out


def test_the_fingerprint_is_short_hex_stable_and_scoped():
    fp = provenance.source_fingerprint()
    assert len(fp) == 12 and int(fp, 16) >= 0 and provenance.source_fingerprint() == fp
    assert provenance.calibration_fingerprint() != fp  # hil is not in a calibration's scope
    files = [rel for rel, _ in provenance._files(provenance.ALL_PACKAGES)]
    assert files == sorted(files) and "hil/train.py" in files and "firmware_stub/presets/default.toml" in files
    assert not any("__pycache__" in f or f.startswith("tests/") for f in files)


def test_train_resume_under_other_code_is_refused_then_allowed_and_recorded(interrupted, monkeypatch):
    recorded = json.loads((interrupted / "checkpoint.json").read_text())["source_fingerprint"]
    assert recorded == provenance.source_fingerprint()
    before = _files(interrupted)
    monkeypatch.setattr(provenance, "source_fingerprint", lambda *a: OTHER)

    r = CliRunner().invoke(cli, ["train", "--out", str(interrupted), "--resume", "--quiet"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume"), r.output
    assert recorded in lines[0] and OTHER in lines[0] and lines[0].endswith("--resume --quiet --allow-code-change")
    assert _files(interrupted) == before  # nothing lost, nothing written

    r = CliRunner().invoke(cli, ["train", "--out", str(interrupted), "--resume", "--allow-code-change", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["source_fingerprint"] == OTHER and summary["earlier_source_fingerprints"] == [recorded]
    changes = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines() if "code_change" in x]
    assert [(c["from"], c["to"]) for c in changes] == [(recorded, OTHER)]

    r = CliRunner().invoke(cli, ["compare", str(interrupted), "--no-plot"])
    assert r.exit_code == 0 and "mixed code" in r.output and f"{recorded}>{OTHER}: 1 run" in r.output, r.output


def test_files_written_before_fingerprints_load_as_unknown(interrupted, tmp_path):
    from calibration.report import CalibrationReport
    from hil.compare import compare
    from hil.stale_runs import stale_run
    from hil.train import load_config_for_resume

    for name in ("config.json", "checkpoint.json"):
        _restamp(interrupted / name, None)
    assert load_config_for_resume(interrupted).method == "float"
    assert stale_run(interrupted).recorded == "unknown"
    r = CliRunner().invoke(cli, ["train", "--out", str(interrupted), "--resume", "--quiet"])
    assert r.exit_code == 2 and "source unknown" in r.output, r.output
    r = CliRunner().invoke(cli, ["train", "--out", str(interrupted), "--resume", "--allow-code-change", "--quiet"])
    assert r.exit_code == 0, r.output

    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["earlier_source_fingerprints"] == ["unknown"]
    for key in ("source_fingerprint", "earlier_source_fingerprints", "source_git"):
        summary.pop(key)
    (interrupted / "summary.json").write_text(json.dumps(summary))
    groups, _ = compare([interrupted])
    assert groups[0].source_fingerprints == ["unknown"]
    cal = {"delta_g_th_s": 1e-6, "delta_g_th_pulses": 3, "write_noise_sigma_s": 1e-6, "c2c_sigma_s": 1e-7,
           "pulse_step_mean_s": {"set": 1e-6, "reset": 1e-6}, "read_noise_rel": 0.01,
           "drift": {"mu_s": 0.0, "sigma0_s": 0.0, "sigma1_s": 0.0}, "stuck_fraction": 0.0, "d2d_cv": 0.1,
           "software_version": "0.1.0"}
    (tmp_path / "calibration.json").write_text(json.dumps(cal))
    assert CalibrationReport.load(tmp_path / "calibration.json").source_fingerprint is None


DEMO = ["--board", "emu?rows=32&cols=84&seed=5", "--task", "digits-small", "--epochs", "1", "--seeds", "1",
        "--quiet"]


@pytest.mark.slow
def test_demo_resume_remakes_stale_parts_unless_kept_and_then_compare_says_mixed(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), *DEMO])
    assert r.exit_code == 0, r.output
    current = provenance.source_fingerprint()
    float_summary = out / "seed-0" / "float" / "summary.json"
    kept = {m: _files(out / "seed-0" / m) for m in ("bp", "eapu", "calibration")}

    _restamp(float_summary, OTHER)  # the float run was made by older code
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), *DEMO, "--resume"])
    assert r.exit_code == 0, r.output
    assert f"1 of 4 finished parts were made by other code (source {OTHER} (1)) than this ({current})" in r.output
    assert "seed 0: float test_accuracy" in r.output and "seed 0: bp" not in r.output  # only the stale part ran
    assert json.loads(float_summary.read_text())["source_fingerprint"] == current
    assert json.loads((out / "superseded" / OTHER / "seed-0" / "float" / "summary.json").read_text())[
        "source_fingerprint"] == OTHER  # set aside, not lost
    assert {m: _files(out / "seed-0" / m) for m in kept} == kept
    assert "mixed code" not in r.output

    _restamp(float_summary, OTHER)
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), *DEMO, "--resume", "--keep-stale"])
    assert r.exit_code == 0, r.output
    assert "kept (--keep-stale)" in r.output and "seed 0: float" not in r.output
    assert f"mixed code: these runs were made by 2 versions of the code (source fingerprint {OTHER}: 1 run, " \
           f"{current}: 2 runs)" in r.output
    r = CliRunner().invoke(cli, ["compare", *(str(out / "seed-0" / m) for m in ("float", "bp", "eapu")), "--json",
                                 "--no-plot"])
    data = json.loads(r.output)
    assert data["mixed_code"] and data["source_fingerprints"] == dict(sorted({OTHER: 1, current: 2}.items()))

    # a calibration made by other code is made again, and so are the runs trained on it (float is not)
    _restamp(out / "seed-0" / "calibration" / "calibration.json", None)
    r = CliRunner().invoke(cli, ["demo", "--out", str(out), *DEMO, "--resume"])
    assert r.exit_code == 0, r.output
    assert "calibrated" in r.output and "seed 0: bp" in r.output and "seed 0: eapu" in r.output
    assert (out / "superseded" / "unknown" / "seed-0" / "calibration" / "calibration.json").is_file()
    assert (out / "superseded" / OTHER / "seed-0" / "float~2").is_dir()  # the kept stale float: remade now


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_resume_remakes_a_stale_point_and_keep_stale_keeps_it(tmp_path):
    pytest.importorskip("ray")
    spec = tmp_path / "sweep.toml"
    spec.write_text('[base]\ntask = "digits-small"\nepochs = 1\nhidden = [16]\nmethod = "float"\n\n'
                    '[grid]\nseed = [0, 1]\n')
    out = tmp_path / "sweep"
    args = ["sweep", str(spec), "--out", str(out), "--num-cpus", "1", "--quiet"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    points = json.loads((out / "sweep.json").read_text())["points"]
    stale, other = (Path(p["dir"]) for p in points)
    untouched = _files(other)
    current = provenance.source_fingerprint()

    _restamp(stale / "summary.json", OTHER)
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert f"1 of 2 finished points and calibrations were made by other code (source {OTHER} (1))" in r.output
    assert json.loads((stale / "summary.json").read_text())["source_fingerprint"] == current
    assert (out / "superseded" / OTHER / "runs" / stale.name / "summary.json").is_file()
    assert _files(other) == untouched and "mixed code" not in r.output

    _restamp(stale / "summary.json", OTHER)
    r = CliRunner().invoke(cli, [*args, "--resume", "--keep-stale"])
    assert r.exit_code == 0, r.output
    assert "kept (--keep-stale)" in r.output and "mixed code" in r.output
    assert "mixed code" in (out / "comparison.md").read_text()
    assert json.loads((out / "comparison.json").read_text())["mixed_code"] is True
