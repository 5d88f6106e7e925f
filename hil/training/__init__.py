"""The parts of the host training loop (:mod:`hil.train` runs them), one job each.

``config`` what defines a run; ``plan`` one step's computation into a typed pulse
plan; ``state`` the run's figures and what a checkpoint holds; ``checkpointer``
save and resume; ``write_ahead`` how a resumed run knows whether a step's pulses
were applied; ``board_setup`` the board's identity and calibration; ``target``
where the weights live (on a board, or in host memory for ``float``);
``report`` evaluation and the summary; ``faults`` the crash hook for tests.
"""
