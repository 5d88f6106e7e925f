"""CalibrationReport: what a calibration measured, as written to ``calibration.json``.

Other tools read this file, so the headline fields are plain numbers in SI units
(siemens, seconds) under the names ARCHITECTURE.md fixes; the one-sigma
uncertainty of each measured field is given under the same name in
``uncertainty``.  Everything else (curves, fits, sample description) follows.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class DriftModel(BaseModel):
    """Post-write relaxation: mean shift ``-mu_s*ln(1+t/t0_s)``, spread ``sigma0_s + sigma1_s*ln(1+t/t0_s)``."""

    model: str = "log"
    mu_s: float
    sigma0_s: float
    sigma1_s: float
    t0_s: float = 1.0
    per_level: list[dict] = Field(default_factory=list, description="fits for each programmed level")


class SoftBoundsFit(BaseModel):
    """Mean step per pulse as a function of normalised state: ``alpha_s * (1-x)**gamma`` (SET) or ``alpha_s * x**gamma`` (RESET)."""

    alpha_s: float
    gamma: float
    g_min_s: float
    g_max_s: float


class CalibrationReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    schema_version: int = 1
    board: dict = Field(default_factory=dict, description="identity of the board measured")
    delta_g_th_s: float = Field(description="EaPU noise threshold: SNR=1 change times k, siemens")
    delta_g_th_k: float = 1.0
    delta_g_th_pulses: int = Field(description="pulses of one EaPU quantum at mid-window")
    write_noise_sigma_s: float = Field(description="write offset per write event, sigma_w")
    c2c_sigma_s: float = Field(description="cycle-to-cycle spread of one pulse's step, absolute")
    pulse_step_mean_s: dict[str, float] = Field(description="mean |step| per pulse at mid-window, set/reset")
    pulse_response: dict[str, SoftBoundsFit] = Field(default_factory=dict)
    read_noise_rel: float
    drift: DriftModel
    drift_delay_s: float | None = Field(None, description="write-to-use delay whose drift spread was added to delta_g_th_s")
    stuck_fraction: float
    d2d_cv: float = Field(description="device-to-device coefficient of variation of the step size")
    window_s: dict[str, float] = Field(default_factory=dict, description="g_min / g_max estimates")
    uncertainty: dict[str, float] = Field(default_factory=dict, description="one-sigma uncertainty by field name")
    sample: dict = Field(default_factory=dict, description="devices used, pulses each received, parameters")
    duration_s: float = 0.0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationReport":
        p = Path(path)
        try:
            return cls.model_validate(json.loads(p.read_text()))
        except FileNotFoundError:
            raise ValueError(f"calibration file {p} does not exist; run `hil calibrate` first") from None
        except (json.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"calibration file {p} is not a valid calibration report: {exc}") from None
