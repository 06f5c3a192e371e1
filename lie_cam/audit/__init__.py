"""Auditing a model you received: the detectors, and the third-party CAM methods as their users call them.

    from lie_cam.audit import DETECTORS, score_all, explainer, explain
    score_all(model, x)                                  # every detector's score on clean images x
    explain(explainer("pytorch-grad-cam", "GradCAM"), model, x, classes)   # (default, raw) maps

`detectors` (nine tests, higher = more suspicious, and their AUROC), `explainers` (the CAM registry and
the verdicts of the explainer matrix), `trigger` (the search for a
triggered lie in Grad-CAM's layer, trigger unknown), `adapters` (stock AblationCAM on a manipulated model).
"""

from lie_cam.audit.adapters import expose_explained_layer
from lie_cam.audit.detectors import DETECTORS, Detector, auroc, score_all, tpr_at_fpr
from lie_cam.audit.explainers import EXPLAINERS, Explainer, explain, explainer, verdict
from lie_cam.audit.trigger import TriggerSearch, trigger_score, trigger_search

__all__ = ["DETECTORS", "Detector", "score_all", "auroc", "tpr_at_fpr", "EXPLAINERS", "Explainer", "explainer",
           "explain", "verdict", "expose_explained_layer", "TriggerSearch", "trigger_search",
           "trigger_score"]
