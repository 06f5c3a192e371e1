"""Experiments: the commands that measure and write files (the only modules that do).

`reproduce` (Tables 1-2, with `engine`, `distributed`, `report`), `matrix` (which explainers lie),
`detection` (the detectors' AUROC on the zoo), `audit` (one model file: every self-relative check
and a report), `trigger_study` (the trigger search against T4), `learn` (learned attacks as files),
`learned_study` (learned against closed-form attacks and the audit), `precision` (float64 to float16),
`zoo` (the clean models). Each is `python -m lie_cam <command> --out DIR` (`lie_cam.cli`); import the module you need,
e.g. `from lie_cam.experiments.reproduce import run_reproduction`.
"""

__all__ = ["reproduce", "engine", "distributed", "report", "matrix", "detection", "audit", "trigger_study", "learn",
           "learned_study", "precision", "zoo"]
