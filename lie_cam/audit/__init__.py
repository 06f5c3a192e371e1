"""Auditing a model you received: the detectors, and the third-party CAM methods as their users call them.

    from lie_cam.audit import DETECTORS, score_all, explainer, explain
    score_all(model, x)                                  # every detector's score on clean images x
    explain(explainer("pytorch-grad-cam", "GradCAM"), model, x, classes)   # (default, raw) maps

`detectors` (eight tests, higher = more suspicious, and their AUROC), `explainers` (the CAM registry and
the verdicts of the explainer matrix), `adapters` (stock AblationCAM on a manipulated model).
"""

from lie_cam.audit.adapters import expose_explained_layer
from lie_cam.audit.detectors import DETECTORS, Detector, auroc, score_all, tpr_at_fpr
from lie_cam.audit.explainers import EXPLAINERS, Explainer, explain, explainer, verdict

__all__ = ["DETECTORS", "Detector", "score_all", "auroc", "tpr_at_fpr", "EXPLAINERS", "Explainer", "explainer",
           "explain", "verdict", "expose_explained_layer"]
