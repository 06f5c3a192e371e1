"""Explorers: move c_W, eps and friends and watch the explanation change.

    from lie_cam.explore import measure, T1Explorer, precompute
    measure("T1", model, x, c_W=10.0)   # one manipulated network measured on one image (`measure`)
    T1Explorer(model, x)                # live ipywidgets sliders (needs a kernel: `widgets`)
    precompute("T1", model, x)          # kernel-free sliders for the book's HTML (`sliders`)
"""

from lie_cam.explore.measure import SPECS, Measurement, SliderSpec, TechniqueSpec, honest_base, measure, measure_batch
from lie_cam.explore.sliders import SliderBlock, block_html, precompute
from lie_cam.explore.widgets import Explorer, T1Explorer, T2Explorer, T3Explorer, T4Explorer

__all__ = ["SPECS", "SliderSpec", "TechniqueSpec", "Measurement", "honest_base", "measure", "measure_batch",
           "SliderBlock", "block_html", "precompute", "Explorer", "T1Explorer", "T2Explorer", "T3Explorer", "T4Explorer"]
