"""Kernel-free sliders for the book's HTML: `lie_cam.explore.measure.measure` precomputed on a grid, one
self-contained HTML block (inline data and script, no CDN, no network request).

    block = precompute("T1", model, x[:3], class_names=ch.name, ranks=(0, 1), norms=("max", "min-max"))
    block                                  # displays as the HTML block
    block.changes("c_W")                   # (steps that change the picture, ... the map, steps)

The controls s_1..s_m are the scene (when x holds several images), the explained class (by
rank, when several `ranks`), the technique's own (`measure.SPECS[technique].sliders`, less any
given as a fixed keyword) and the normalisation (when several `norms`), each with its kernel-free
values (n_j of them); the build measures all n_1 * ... * n_m combinations, one network build
per combination of the technique's own controls (`measure.measure_batch` explains every scene,
class and normalisation from it). Record r of the combination (i_1, ..., i_m) sits at

    r = sum_j i_j * stride_j,   stride_m = 1,  stride_j = stride_{j+1} * n_{j+1}

and holds the normalised map quantised to bytes (round(255 I~), h x w, base64), the numbers
as display strings and the gauges in pixels (`gauges`: the score change on a log scale, eps,
the added channel's map share). In the browser a small inline script maps the controls to r and draws, on
<canvas> elements, the map bilinearly upsampled (as `lie_cam.gradcam.upsample`: align_corners
False) in matplotlib's jet colours blended 50 % over the image (a JPEG data: URI), the raw
h x w map (nearest neighbour), a colour bar and the gauges; the numbers table is rewritten at once.
`SliderBlock.changes` counts, in Python, the steps of a control that change what is drawn: the
book's chapters assert them and tests/browser/check_book.py sees the same in Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lie_cam.attacks import SignWarning
from lie_cam.explore.measure import SPECS, BaseCache, Measurement, SliderSpec, normalise

__all__ = ["SliderBlock", "precompute", "block_html", "colormap_lut", "gauges", "view_controls", "GAUGE_WIDTH"]

# (key, label) of the numbers shown beside the map, in order.
NUMBERS = (
    ("score_change", "score change max<sub>c</sub> |y<sub>o</sub> − y<sub>n</sub>|"),
    ("alpha_extra", "α<sub>K+1</sub>"),
    ("alpha_share", "α share of Σ|α<sub>k</sub>|"),
    ("map_share", "map share of the terms"),
    ("l1", "L1 to the target"),
    ("classes", "top class: original → manipulated"),
    ("explained", "explained class"),
)
GAUGE_WIDTH = 200       # px of the gauges' bars
SCORE_DECADES = (-8, 0)  # the score-change gauge spans 1e-8 .. 1 (log10)


@dataclass
class SliderBlock:
    """Every grid point of one technique, measured on one image (or S scenes), ready to be written
    as HTML. `controls`: the scene (S >= 2), the explained class (by rank, when several), the
    technique's own controls (`SPECS[technique].sliders`) and the normalisation (when several)."""

    technique: str
    controls: tuple[SliderSpec, ...]
    points: tuple[tuple, ...]                # the values of each control, in `controls` order
    records: list[Measurement]               # row-major over `points` (the last control fastest)
    class_names: Callable[[int], str] | None = None
    _images: dict = field(default_factory=dict, repr=False, compare=False)

    def index(self, **values: Any) -> int:
        """The record number of one value of every control (exact grid values; defaults fill gaps)."""
        unknown = set(values) - {s.name for s in self.controls}
        if unknown:
            raise KeyError(f"no control {sorted(unknown)}; the block has {[s.name for s in self.controls]}")
        index = 0
        for spec, pts in zip(self.controls, self.points):
            value = values.get(spec.name, spec.default)
            if value not in pts:
                raise KeyError(f"{spec.name}={value!r} is not on the grid {list(pts)}")
            index = index * len(pts) + list(pts).index(value)
        return index

    def record(self, **values: Any) -> Measurement:
        """The record for one value of every control (exact grid values; defaults fill gaps)."""
        return self.records[self.index(**values)]

    def picture(self, m: Measurement) -> tuple:
        """What the page draws for a record: the map in bytes, the image, the gauges in pixels."""
        return (_map_bytes(m.map), _image_key(m.image, self._images), *gauges(m))

    def changes(self, name: str) -> tuple[int, int, int]:
        """Moving control `name` step by step through its values, the others at their defaults:
        (steps where the drawn picture changes, steps where the map itself changes, steps)."""
        spec = next((s for s in self.controls if s.name == name), None)
        if spec is None:
            raise KeyError(f"no control {name!r}; the block has {[s.name for s in self.controls]}")
        pts = self.points[self.controls.index(spec)]
        shown = [self.record(**{name: v}) for v in pts]
        pictures = [self.picture(m) for m in shown]
        maps = [p[0] for p in pictures]
        steps = len(pts) - 1
        return (sum(a != b for a, b in zip(pictures, pictures[1:])), sum(a != b for a, b in zip(maps, maps[1:])),
                steps)

    def html(self) -> str:
        return block_html(self)

    def __repr__(self) -> str:
        """One line (a notebook stores it beside the HTML: the records' tensors would take megabytes)."""
        grid = ", ".join(f"{s.name}: {len(p)}" for s, p in zip(self.controls, self.points))
        return f"SliderBlock({self.technique!r}, {len(self.records)} records; {grid})"

    def _repr_html_(self) -> str:
        return self.html()


def gauges(m: Measurement) -> tuple[int, int, int]:
    """The gauges drawn beside the map, in pixels of `GAUGE_WIDTH`: the score change on a log scale
    from 1e-8 to 1 (0 px when it is 0), the bound eps on the same scale (-1: no eps), and the added
    channel's map share on a linear scale."""
    low, high = SCORE_DECADES

    def log_px(v: float) -> int:
        if not v > 0:
            return 0
        return int(round(GAUGE_WIDTH * min(max((math.log10(v) - low) / (high - low), 0.0), 1.0)))

    eps = m.params.get("eps")
    return log_px(m.score_change), (log_px(eps) if eps else -1), int(round(GAUGE_WIDTH * m.map_share))


def view_controls(scenes: int, ranks: Sequence[int], norms: Sequence[str]) -> tuple[tuple, tuple, tuple]:
    """The controls that change what is measured on, not the network: the scene, the explained class
    (by rank among the honest scores), the normalisation; each only when it has several values."""
    ordinal = {0: "top", 1: "2nd", 2: "3rd"}
    scene = SliderSpec("scene", "scene", 0, choices=tuple(range(scenes)),
                       labels=tuple(str(i + 1) for i in range(scenes)))
    rank = SliderSpec("class", "explained class", ranks[0], choices=tuple(ranks),
                      labels=tuple(ordinal.get(r, f"{r + 1}th") for r in ranks))
    norm = SliderSpec("norm", "normalisation", norms[0], choices=tuple(norms),
                      labels=tuple({"max": "I / max I", "min-max": "min-max"}.get(n, n) for n in norms))
    before = tuple(s for s, n in ((scene, scenes), (rank, len(ranks))) if n >= 2)
    return before, ((norm,) if len(norms) >= 2 else ()), (scene, rank, norm)


def precompute(technique: str, model: nn.Module, x: torch.Tensor, class_names: Callable[[int], str] | None = None,
               points: dict[str, Sequence[Any]] | None = None, ranks: Sequence[int] = (0,),
               norms: Sequence[str] = ("max",), **fixed: Any) -> SliderBlock:
    """Measure `technique` on the image x (or each of S scenes, S x 3 x H x W) at every combination
    of the controls' kernel-free values (`points` overrides them per control), explaining the
    classes of `ranks` (0: the top class) with the maps normalised by each of `norms` ("max",
    "min-max"); `fixed` constants go to every build. One build per combination of the technique's
    controls: the scenes, classes and normalisations share it (`measure.measure_batch`). The paper
    build's `SignWarning` (alpha_{K+1} <= 0 for a class) is not printed: the block shows what it
    warns of, the class control's empty map."""
    if technique not in SPECS:
        raise KeyError(f"technique must be one of {sorted(SPECS)}, got {technique!r}")
    spec = SPECS[technique]
    points = dict(points or {})
    unknown = set(points) - {s.name for s in spec.sliders if s.name not in fixed}
    if unknown:
        raise KeyError(f"{technique} has no control {sorted(unknown)}; it has {[s.name for s in spec.sliders]}")
    moving = tuple(s for s in spec.sliders if s.name not in fixed)  # a control given in `fixed` stays put
    grid = tuple(tuple(points.get(s.name, s.kernel_free_points())) for s in moving)
    if any(len(g) < 2 for g in grid):
        raise ValueError("every control needs at least 2 values to move between")
    for norm in norms:
        normalise(torch.zeros(1, 1, 1), norm)
    cache = BaseCache(model, x)
    scenes, ranks, norms = len(cache.x), tuple(ranks), tuple(norms)
    names = [s.name for s in moving]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SignWarning)
        measured = [cache.measure_batch(technique, ranks, norms, **fixed, **dict(zip(names, combo)))
                    for combo in itertools.product(*grid)]
    before, after, _ = view_controls(scenes, ranks, norms)
    controls = (*before, *moving, *after)
    all_points = tuple(s.choices for s in before) + grid + tuple(s.choices for s in after)
    records = []
    for s, r in itertools.product(range(scenes), range(len(ranks))):
        for batch in measured:
            records += batch[(s * len(ranks) + r) * len(norms):(s * len(ranks) + r + 1) * len(norms)]
    return SliderBlock(technique, controls, all_points, records, class_names)


def colormap_lut(name: str = "jet") -> bytes:
    """256 RGB triples of a matplotlib colormap (what `plotting.overlay` uses)."""
    from matplotlib import colormaps

    rgba = colormaps[name](torch.linspace(0, 1, 256).numpy())
    return bytes((rgba[:, :3] * 255).round().astype("uint8").reshape(-1).tolist())


def _jpeg_data_uri(image: torch.Tensor, quality: int = 90) -> str:
    from PIL import Image

    from lie_cam.plotting import to_pixels  # matplotlib only when drawing

    pixels = (to_pixels(image).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_key(image: torch.Tensor, known: dict[tuple, bytes]) -> bytes:
    """The image's bytes, read once per tensor storage (the records of a block share a few images)."""
    where = (image.data_ptr(), tuple(image.shape), tuple(image.stride()), image.dtype)
    if where not in known:
        known[where] = image.numpy().tobytes()
    return known[where]


def _map_bytes(cam: torch.Tensor) -> str:
    q = (cam.double().clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1)
    return base64.b64encode(bytes(q.tolist())).decode("ascii")


def _numbers(m: Measurement, name: Callable[[int], str] | None) -> list[str]:
    label = (lambda c: f"{c} ({name(c)})") if name else str
    explained = m.class_explained if m.class_explained >= 0 else m.class_manipulated
    return [f"{m.score_change:.2g}", f"{m.alpha_extra:.3g}", f"{m.alpha_share:.3f}", f"{m.map_share:.3f}",
            f"{m.l1:.3g}", f"{label(m.class_original)} → {label(m.class_manipulated)}", label(explained)]


def _control_html(uid: str, j: int, spec: SliderSpec, pts: Sequence[Any]) -> str:
    default = pts.index(spec.default) if spec.default in pts else 0
    label = html.escape(spec.label)
    if spec.is_choice:
        options = "".join(
            f'<label style="margin-right:0.8em;white-space:nowrap"><input type="radio" name="{uid}-{j}" value="{i}"'
            f'{" checked" if i == default else ""} data-control="{j}"> {html.escape(spec.format(v))}</label>'
            for i, v in enumerate(pts))
        return (f'<div class="lc-control" style="margin:0.2em 0;display:flex;align-items:center;flex-wrap:wrap;'
                f'column-gap:0.6em"><span style="min-width:11em">{label}</span><span>{options}</span></div>')
    return (f'<div class="lc-control" style="margin:0.2em 0;display:flex;align-items:center;flex-wrap:wrap;gap:0.6em">'
            f'<label for="{uid}-{j}" style="min-width:11em">{label}</label>'
            f'<input type="range" id="{uid}-{j}" min="0" max="{len(pts) - 1}" step="1" value="{default}" '
            f'data-control="{j}" style="width:14em;max-width:100%" aria-label="{label}">'
            f'<output data-value="{j}" style="font-family:monospace;min-width:5em">{html.escape(spec.format(pts[default]))}'
            f"</output></div>")


_SCRIPT = r"""
(function () {
  var root = document.getElementById("%UID%");
  var D = JSON.parse(root.querySelector("script.lc-data").textContent);
  function bytes(s) { var b = atob(s), a = new Uint8Array(b.length); for (var i = 0; i < b.length; i++) a[i] = b.charCodeAt(i); return a; }
  var lut = bytes(D.lut), H = D.h, W = D.w, S = D.size;
  var overlay = root.querySelector("canvas.lc-overlay"), raw = root.querySelector("canvas.lc-raw");
  var bar = root.querySelector("canvas.lc-bar"), gauge = root.querySelector("canvas.lc-gauge");
  var pixels = [], pending = D.images.length;
  D.images.forEach(function (src, k) {
    var im = new Image();
    im.onload = function () {
      var c = document.createElement("canvas"); c.width = S; c.height = S;
      var g = c.getContext("2d"); g.drawImage(im, 0, 0, S, S);
      pixels[k] = g.getImageData(0, 0, S, S).data;
      if (--pending === 0) render();
    };
    im.src = src;
  });
  // Bilinear upsampling as torch.nn.functional.interpolate(mode="bilinear", align_corners=False).
  function taps(n_in, n_out) {
    var t = [], scale = n_in / n_out;
    for (var i = 0; i < n_out; i++) {
      var s = Math.max(scale * (i + 0.5) - 0.5, 0), i0 = Math.floor(s), i1 = i0 < n_in - 1 ? i0 + 1 : i0;
      t.push([i0, i1, s - i0]);
    }
    return t;
  }
  var ty = taps(H, S), tx = taps(W, S);
  function state() {
    var idx = 0, shown = [];
    D.controls.forEach(function (c, j) {
      var el = root.querySelector('input[type=range][data-control="' + j + '"]'), pos;
      if (el) pos = parseInt(el.value, 10);
      else pos = parseInt(root.querySelector('input[data-control="' + j + '"]:checked').value, 10);
      idx = idx * c.n + pos;
      var out = root.querySelector('output[data-value="' + j + '"]');
      if (out) out.textContent = c.labels[pos];
    });
    return idx;
  }
  function render() {
    var r = D.records[state()], m = bytes(r.map), img = pixels[r.image];
    var g = overlay.getContext("2d"), out = g.createImageData(S, S), o = out.data;
    for (var y = 0; y < S; y++) {
      var a = ty[y];
      for (var x = 0; x < S; x++) {
        var b = tx[x];
        var v = (1 - a[2]) * ((1 - b[2]) * m[a[0] * W + b[0]] + b[2] * m[a[0] * W + b[1]])
              + a[2] * ((1 - b[2]) * m[a[1] * W + b[0]] + b[2] * m[a[1] * W + b[1]]);
        var q = Math.min(255, Math.max(0, Math.round(v))), p = 4 * (y * S + x);
        for (var ch = 0; ch < 3; ch++) o[p + ch] = Math.round(0.5 * img[p + ch] + 0.5 * lut[3 * q + ch]);
        o[p + 3] = 255;
      }
    }
    g.putImageData(out, 0, 0);
    var gr = raw.getContext("2d"), cell = S / W;
    for (var i = 0; i < H; i++) for (var j = 0; j < W; j++) {
      var q2 = m[i * W + j];
      gr.fillStyle = "rgb(" + lut[3 * q2] + "," + lut[3 * q2 + 1] + "," + lut[3 * q2 + 2] + ")";
      gr.fillRect(j * cell, i * (S / H), cell + 0.5, S / H + 0.5);
    }
    var gg = gauge.getContext("2d"), GW = D.gauge;
    gg.fillStyle = "#fff"; gg.fillRect(0, 0, gauge.width, gauge.height);
    [[r.g[0], 2, "#c0392b"], [r.g[2], 24, "#2c6fbb"]].forEach(function (b) {
      gg.fillStyle = "#e6e6e6"; gg.fillRect(0, b[1], GW, 14);
      gg.fillStyle = b[2]; gg.fillRect(0, b[1], b[0], 14);
    });
    if (r.g[1] >= 0) { gg.fillStyle = "#000"; gg.fillRect(Math.min(r.g[1], GW - 2), 0, 2, 18); }
    root.querySelectorAll("[data-number]").forEach(function (td) {
      td.textContent = r.numbers[parseInt(td.getAttribute("data-number"), 10)];
    });
    root.setAttribute("data-record", String(state()));
  }
  var gb = bar.getContext("2d");
  for (var y = 0; y < bar.height; y++) {
    var q = Math.round(255 * (1 - y / (bar.height - 1)));
    gb.fillStyle = "rgb(" + lut[3 * q] + "," + lut[3 * q + 1] + "," + lut[3 * q + 2] + ")";
    gb.fillRect(0, y, bar.width, 1);
  }
  root.querySelectorAll("input[data-control]").forEach(function (el) {
    el.addEventListener("input", function () { if (pending === 0) render(); });
    el.addEventListener("change", function () { if (pending === 0) render(); });
  });
})();
"""


def block_html(block: SliderBlock) -> str:
    """The self-contained HTML of a kernel-free slider block (see the module docstring)."""
    uid = f"lc-{block.technique.lower()}-{uuid.uuid4().hex[:8]}"
    first = block.records[0]
    h, w = first.map.shape
    images: list[str] = []
    image_index: dict[bytes, int] = {}
    records = []
    known: dict[tuple, bytes] = {}
    for m in block.records:
        key = _image_key(m.image, known)
        if key not in image_index:
            image_index[key] = len(images)
            images.append(_jpeg_data_uri(m.image))
        records.append({"map": _map_bytes(m.map), "image": image_index[key], "g": list(gauges(m)),
                        "numbers": _numbers(m, block.class_names)})
    size = int(first.image.shape[-1])
    data = {
        "h": h, "w": w, "size": size, "images": images, "records": records, "gauge": GAUGE_WIDTH,
        "lut": base64.b64encode(colormap_lut()).decode("ascii"),
        "controls": [{"name": s.name, "n": len(p), "labels": [s.format(v) for v in p]}
                     for s, p in zip(block.controls, block.points)],
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    controls = "".join(_control_html(uid, j, s, list(p)) for j, (s, p) in enumerate(zip(block.controls, block.points)))
    rows = "".join(f'<tr><td style="padding:0.1em 0.8em 0.1em 0">{label}</td>'
                   f'<td data-number="{k}" style="font-family:monospace;padding:0.1em 0"></td></tr>'
                   for k, (_, label) in enumerate(NUMBERS))
    title = html.escape(SPECS[block.technique].title)
    grid = ", ".join(f"{html.escape(s.name)}: {len(p)} values" for s, p in zip(block.controls, block.points))
    eps_note = " (black tick: ε)" if any(sp.name == "eps" for sp in block.controls) else ""
    canvas = f'width="{size}" height="{size}" style="width:{size}px;max-width:100%;height:auto;display:block"'
    return f"""<div id="{uid}" class="lc-slider" data-lie-cam-slider="{html.escape(block.technique)}" style="border:1px solid #ccc;border-radius:4px;padding:0.6em;margin:0.5em 0;max-width:100%;box-sizing:border-box;overflow:hidden">
<div style="font-weight:bold">{title}: kernel-free explorer</div>
<div style="font-size:0.9em;margin-bottom:0.3em">Precomputed by the book build on a grid ({grid}); it runs in your browser, with no kernel and no network. Each control starts where moving it changes the picture. The live explorer with every value needs a kernel (Jupyter, Colab).</div>
{controls}
<div style="display:flex;flex-wrap:wrap;gap:0.8em;align-items:flex-start;margin-top:0.4em">
<figure style="margin:0"><canvas class="lc-overlay" {canvas}></canvas><figcaption style="font-size:0.9em">Grad-CAM over the image</figcaption></figure>
<figure style="margin:0"><canvas class="lc-raw" {canvas}></canvas><figcaption style="font-size:0.9em">the raw {h}×{w} map</figcaption></figure>
<div style="display:flex;gap:0.3em"><canvas class="lc-bar" width="14" height="{size}" style="width:14px;height:{size}px"></canvas>
<div style="display:flex;flex-direction:column;justify-content:space-between;height:{size}px;font-size:0.85em"><span>1</span><span>0.5</span><span>0</span></div></div>
<figure style="margin:0;max-width:100%"><canvas class="lc-gauge" width="{GAUGE_WIDTH}" height="40" style="width:{GAUGE_WIDTH}px;max-width:100%;height:auto;display:block"></canvas>
<figcaption style="font-size:0.85em;max-width:{GAUGE_WIDTH + 40}px"><span style="color:#c0392b">■</span> score change, log scale 10<sup>−8</sup> … 1{eps_note};
<span style="color:#2c6fbb">■</span> the added channel's share of the map, 0 … 1</figcaption></figure>
<table style="border-collapse:collapse;font-size:0.95em;margin:0;max-width:100%"><tbody>{rows}</tbody></table>
</div>
<script type="application/json" class="lc-data">{payload}</script>
<script>{_SCRIPT.replace("%UID%", uid)}</script>
</div>"""
