"""CalibrationReport: what a calibration measured, as written to ``calibration.json``.

Other tools read this file, so the headline fields are plain numbers in SI units
(siemens, seconds) under the names ARCHITECTURE.md fixes; the one-sigma
uncertainty of each measured field is given under the same name in
``uncertainty`` (``pulse_step_mean_s.set`` etc. for dict entries, ``drift.mu_s`` for
the drift parameters).  Everything else (curves, fits, sample description)
follows.

Fields the training loop reads: ``delta_g_th_s``, ``delta_g_th_pulses``,
``pulse_step_mean_s`` ({"set", "reset"}), ``pulse_response`` (soft-bounds fit per
polarity: ``alpha_s``, ``gamma``, ``g_min_s``, ``g_max_s``), ``window_s``
({"g_min_s", "g_max_s"}) and ``write_noise_sigma_s``.

Conventions:

* ``write_noise_sigma_s`` is the persistent write error ``sigma_w`` of ONE write event
  (one per pulse batch, whatever its size): it stays in the device's state, so
  unverified writes random-walk.  The relaxation spread at t ~ 0 (``drift.sigma0_s``)
  is a read-visible offset redrawn at every event, separated from it because it does
  not accumulate.  The change between reads before and after an event has variance
  ``sigma_w^2 + 2 sigma0^2 + n c2c^2`` (plus read noise).
* ``c2c_sigma_s`` is the cycle-to-cycle spread of one SET pulse at mid-window
  (``c2c_sigma_rel`` times the mean SET step there), so one event of n pulses at
  mid-window changes the stored state with ``sigma(n)^2 = sigma_w^2 + n c2c_sigma_s^2``.
* ``pulse_response[pol]`` gives the mean step per pulse
  ``alpha_s * (1-x)**gamma`` (SET) or ``alpha_s * x**gamma`` (RESET),
  ``x = (G - g_min_s)/(g_max_s - g_min_s)``; ``pulse_step_mean_s[pol]`` is its value at
  x = 0.5.
* ``drift`` follows ``-mu_s ln(1+t/t0_sec)`` (mean) and ``sigma1_s ln(1+t/t0_sec)`` (spread
  of the change since t ~ 0); ``sigma0_s`` is the spread at t ~ 0, measured by the
  write-noise stage.
* ``run`` holds what legitimately differs between two runs of the same calibration
  (address, wall-clock times, board-clock times, resumed stages, files); everything
  else is a deterministic function of the seed and the board's state.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from drivers.limits import validation_summary
from protocols.unit_names import AcceptsOldSecondNames


class DriftModel(AcceptsOldSecondNames):
    """Post-write relaxation: mean shift ``-mu_s*ln(1+t/t0_sec)``, spread ``sigma0_s + sigma1_s*ln(1+t/t0_sec)``."""

    model: str = "log"
    mu_s: float
    sigma0_s: float | None = Field(None, description="spread at t ~ 0, redrawn at each write event (write-noise stage)")
    sigma1_s: float
    t0_sec: float = 1.0
    per_level: list[dict] = Field(default_factory=list, description="fits for each programmed level")


class SoftBoundsFit(BaseModel):
    """Mean step per pulse versus normalised state: ``alpha_s (1-x)**gamma`` (SET) or ``alpha_s x**gamma`` (RESET)."""

    alpha_s: float
    gamma: float
    g_min_s: float
    g_max_s: float


class CalibrationReport(AcceptsOldSecondNames):
    model_config = ConfigDict(extra="allow")

    schema_version: int = 2
    software_version: str | None = Field(None, description="version of memristor-hil that measured this calibration")
    source_fingerprint: str | None = Field(
        None, description="the code that measured it: protocols.provenance.calibration_fingerprint (the packages "
                          "below hil); None in files written before it was recorded (unknown)")
    board: dict = Field(default_factory=dict, description="identity of the board measured")
    profiles: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="pulse profiles calibrated: set/reset amplitude_v, width_sec")
    delta_g_th_s: float = Field(description="EaPU noise threshold: the SNR=1 change times "
                                            "delta_g_th_snr1_multiple, siemens")
    delta_g_th_snr1_multiple: float = Field(
        1.0, validation_alias=AliasChoices("delta_g_th_snr1_multiple", "delta_g_th_k"),
        description="ΔGth as a multiple of the SNR=1 change (calibration's factor; read from delta_g_th_k in older "
                    "files; not training's delta_g_th_k, a multiple of this ΔGth)")
    delta_g_th_pulses: int = Field(description="pulses of one EaPU quantum at mid-window (larger of the polarities)")
    delta_g_th_pulses_by_polarity: dict[str, int] = Field(default_factory=dict)
    delta_g_th_by_polarity: dict[str, dict[str, float]] = Field(default_factory=dict)
    write_noise_sigma_s: float = Field(description="persistent write error per write event, sigma_w")
    c2c_sigma_s: float = Field(description="cycle-to-cycle spread of one SET pulse's step at mid-window, absolute")
    c2c_sigma_rel: float | None = Field(None, description="cycle-to-cycle spread relative to the step")
    pulse_step_mean_s: dict[str, float] = Field(description="mean |step| per pulse at mid-window, set/reset")
    pulse_response: dict[str, SoftBoundsFit] = Field(default_factory=dict)
    pulse_step_curve: dict[str, dict[str, list[float | None]]] = Field(
        default_factory=dict, description="model-free mean |step| and its spread over devices versus G, per polarity (None "
                    "where too few devices reached a conductance bin)")
    read_noise_rel: float
    drift: DriftModel
    drift_delay_sec: float | None = Field(
        None, description="write-to-use delay whose drift spread was added to delta_g_th_s")
    stuck_fraction: float
    stuck: dict = Field(default_factory=dict, description="stuck counts (map in the HDF5 file)")
    d2d_cv: float = Field(description="device-to-device coefficient of variation of the (SET) step size")
    d2d: dict = Field(default_factory=dict, description="step CV per polarity, window CV, sources")
    window_s: dict[str, float] = Field(default_factory=dict, description="g_min_s / g_max_s estimates")
    uncertainty: dict[str, float] = Field(default_factory=dict, description="one-sigma uncertainty by field name")
    sample: dict = Field(default_factory=dict, description="devices used and pulses each received, per stage")
    stages: dict = Field(default_factory=dict, description="full result of every stage")
    params: dict = Field(default_factory=dict, description="calibration parameters")
    run: dict = Field(default_factory=dict, description="address, wall/board-clock times, resumed stages, files")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    def deterministic(self) -> dict:
        """Everything but ``run``: equal for two runs with the same seed on the same board state."""
        return self.model_dump(mode="json", exclude={"run"})

    @classmethod
    def load(cls, path: str | Path) -> CalibrationReport:
        p = Path(path)
        try:
            return cls.model_validate(json.loads(p.read_text()))
        except FileNotFoundError:
            raise ValueError(f"calibration file {p} does not exist; run `hil calibrate` first") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"calibration file {p} is not JSON ({exc}); give the calibration.json that "
                             "`hil calibrate` wrote") from None
        except ValidationError as exc:
            missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"]
            hint = (f"it lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: "
                    "give the calibration.json that `hil calibrate` wrote, not another JSON file"
                    if missing else validation_summary(exc))
            raise ValueError(f"calibration file {p} is not a calibration report: {hint}") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"calibration file {p} is not a valid calibration report: {exc}") from None
