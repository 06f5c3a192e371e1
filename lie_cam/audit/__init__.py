"""Auditing a model you received: the detectors, and the third-party CAM methods as their users call them.

    from lie_cam.audit import DETECTORS, score_all, explainer, explain
    score_all(model, x)                                  # every detector's score on clean images x
    explain(explainer("pytorch-grad-cam", "GradCAM"), model, x, classes)   # (default, raw) maps
    audit(model).exit_code                               # 0: no evidence of manipulation, 1: evidence

`detectors` (nine tests, higher = more suspicious, and their AUROC), `calibration` (the audit's
self-relative checks and their thresholds), `auditing` (`audit`: every check on one model),
`loading` (model files without pickle), `trigger` (the search for a triggered lie in Grad-CAM's layer,
trigger unknown), `explainers` (the CAM registry and the verdicts of the explainer matrix), `adapters`
(stock AblationCAM on a manipulated model).
"""

from lie_cam.audit.adapters import expose_explained_layer
from lie_cam.audit.auditing import AuditResult, audit, run_checks
from lie_cam.audit.calibration import CHECKS, Check, CheckResult
from lie_cam.audit.detectors import DETECTORS, Detector, auroc, score_all, tpr_at_fpr
from lie_cam.audit.explainers import EXPLAINERS, Explainer, explain, explainer, verdict
from lie_cam.audit.loading import load_audited
from lie_cam.audit.trigger import TriggerSearch, trigger_score, trigger_search

__all__ = ["DETECTORS", "Detector", "score_all", "auroc", "tpr_at_fpr", "EXPLAINERS", "Explainer", "explainer",
           "explain", "verdict", "expose_explained_layer", "audit", "run_checks", "AuditResult", "CHECKS", "Check",
           "CheckResult", "load_audited", "TriggerSearch", "trigger_search", "trigger_score"]
