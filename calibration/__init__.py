"""Calibration of a memristor test board, through the Board contract only.

Procedures (one module each; each takes a Board and a pydantic parameter model and
returns ``Measured(result, raw)``):

* :func:`calibration.read_noise.measure_read_noise`
* :func:`calibration.stuck.map_stuck`
* :func:`calibration.pulse_response.measure_pulse_response`
* :func:`calibration.write_noise.measure_write_noise`
* :func:`calibration.drift.measure_drift`

Derived figures: :func:`calibration.threshold.delta_g_threshold` (ΔGth) and
:func:`calibration.d2d.device_to_device`.  The whole run, with HDF5 raw data, plots
and resume: :func:`calibration.run.calibrate` -> :class:`CalibrationReport`.
Characterization routines: :mod:`calibration.characterize`.  Command line:
``hil calibrate`` and ``hil characterize`` (:mod:`hil.cli.calibrate`).
"""

from calibration.report import CalibrationReport, DriftModel, SoftBoundsFit

__all__ = ["CalibrationParams", "CalibrationReport", "DriftModel", "SoftBoundsFit", "calibrate"]


def __getattr__(name):  # lazy: importing the report model must not pull in matplotlib or h5py
    if name in ("calibrate", "CalibrationParams"):
        from calibration import run

        return getattr(run, name)
    raise AttributeError(name)
