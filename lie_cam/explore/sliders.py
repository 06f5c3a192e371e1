"""Kernel-free sliders for the book's HTML: `lie_cam.explore.measure.measure` precomputed on a grid, one
self-contained HTML block (inline data and script, no CDN, no network request).

    block = precompute("T1", model, x[i], class_names=ch.name)   # every grid point measured
    block                                                        # displays as the HTML block

For a technique with controls s_1..s_m (`measure.SPECS[technique].sliders`), each with its
kernel-free values `s_j.kernel_free_points()` (n_j of them), the build measures all
n_1 * ... * n_m combinations. Record r of the combination (i_1, ..., i_m) sits at

    r = sum_j i_j * stride_j,   stride_m = 1,  stride_j = stride_{j+1} * n_{j+1}

and holds the normalised map quantised to bytes (round(255 I~), h x w, base64) and the numbers
as display strings. In the browser a small inline script maps the controls to r and draws, on
<canvas> elements, the map bilinearly upsampled (as `lie_cam.gradcam.upsample`: align_corners
False) in matplotlib's jet colours blended 50 % over the image (a JPEG data: URI), the raw
h x w map (nearest neighbour) and a colour bar; the numbers table is rewritten at once.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lie_cam.explore.measure import SPECS, BaseCache, Measurement, SliderSpec

__all__ = ["SliderBlock", "precompute", "block_html", "colormap_lut"]

# (key, label) of the numbers shown beside the map, in order.
NUMBERS = (
    ("score_change", "score change max<sub>c</sub> |y<sub>o</sub> − y<sub>n</sub>|"),
    ("alpha_extra", "α<sub>K+1</sub>"),
    ("alpha_share", "α share of Σ|α<sub>k</sub>|"),
    ("map_share", "map share of the terms"),
    ("l1", "L1 to the target"),
    ("classes", "class: original → manipulated"),
)


@dataclass
class SliderBlock:
    """Every grid point of one technique, measured on one image, ready to be written as HTML."""

    technique: str
    controls: tuple[SliderSpec, ...]
    points: tuple[tuple, ...]                # the values of each control, in `controls` order
    records: list[Measurement]               # row-major over `points` (the last control fastest)
    class_names: Callable[[int], str] | None = None

    def record(self, **values: Any) -> Measurement:
        """The record for one value of every control (exact grid values)."""
        index = 0
        for spec, pts in zip(self.controls, self.points):
            if values[spec.name] not in pts:
                raise KeyError(f"{spec.name}={values[spec.name]!r} is not on the grid {list(pts)}")
            index = index * len(pts) + list(pts).index(values[spec.name])
        return self.records[index]

    def html(self) -> str:
        return block_html(self)

    def _repr_html_(self) -> str:
        return self.html()


def precompute(technique: str, model: nn.Module, x: torch.Tensor, class_names: Callable[[int], str] | None = None,
               points: dict[str, Sequence[Any]] | None = None, **fixed: Any) -> SliderBlock:
    """Measure `technique` on the one image x at every combination of the controls' kernel-free
    values (`points` overrides them per control); `fixed` constants go to every build."""
    if technique not in SPECS:
        raise KeyError(f"technique must be one of {sorted(SPECS)}, got {technique!r}")
    spec = SPECS[technique]
    points = dict(points or {})
    unknown = set(points) - {s.name for s in spec.sliders}
    if unknown:
        raise KeyError(f"{technique} has no control {sorted(unknown)}; it has {[s.name for s in spec.sliders]}")
    grid = tuple(tuple(points.get(s.name, s.kernel_free_points())) for s in spec.sliders)
    if any(len(g) < 2 for g in grid):
        raise ValueError("every control needs at least 2 values to move between")
    cache = BaseCache(model, x)
    records = [cache.measure(technique, **fixed, **dict(zip((s.name for s in spec.sliders), combo)))
               for combo in itertools.product(*grid)]
    return SliderBlock(technique, spec.sliders, grid, records, class_names)


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


def _map_bytes(cam: torch.Tensor) -> str:
    q = (cam.double().clamp(0, 1) * 255).round().to(torch.uint8).reshape(-1)
    return base64.b64encode(bytes(q.tolist())).decode("ascii")


def _numbers(m: Measurement, name: Callable[[int], str] | None) -> list[str]:
    label = (lambda c: f"{c} ({name(c)})") if name else str
    return [f"{m.score_change:.2g}", f"{m.alpha_extra:.3g}", f"{m.alpha_share:.3f}", f"{m.map_share:.3f}",
            f"{m.l1:.3g}", f"{label(m.class_original)} → {label(m.class_manipulated)}"]


def _control_html(uid: str, j: int, spec: SliderSpec, pts: Sequence[Any]) -> str:
    default = pts.index(spec.default) if spec.default in pts else 0
    label = html.escape(spec.label)
    if spec.is_choice:
        options = "".join(
            f'<label style="margin-right:0.8em;white-space:nowrap"><input type="radio" name="{uid}-{j}" value="{i}"'
            f'{" checked" if i == default else ""} data-control="{j}"> {html.escape(spec.format(v))}</label>'
            for i, v in enumerate(pts))
        return (f'<div class="lc-control" style="margin:0.2em 0"><span style="display:inline-block;min-width:11em">'
                f"{label}</span>{options}</div>")
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
  var bar = root.querySelector("canvas.lc-bar");
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
    for m in block.records:
        key = m.image.numpy().tobytes()
        if key not in image_index:
            image_index[key] = len(images)
            images.append(_jpeg_data_uri(m.image))
        records.append({"map": _map_bytes(m.map), "image": image_index[key],
                        "numbers": _numbers(m, block.class_names)})
    size = int(first.image.shape[-1])
    data = {
        "h": h, "w": w, "size": size, "images": images, "records": records,
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
    canvas = f'width="{size}" height="{size}" style="width:{size}px;max-width:100%;height:auto;display:block"'
    return f"""<div id="{uid}" class="lc-slider" data-lie-cam-slider="{html.escape(block.technique)}" style="border:1px solid #ccc;border-radius:4px;padding:0.6em;margin:0.5em 0;max-width:100%;box-sizing:border-box;overflow:hidden">
<div style="font-weight:bold">{title}: kernel-free explorer</div>
<div style="font-size:0.9em;margin-bottom:0.3em">Precomputed by the book build on a grid ({grid}); it runs in your browser, with no kernel and no network. The live explorer with every value needs a kernel (Jupyter, Colab).</div>
{controls}
<div style="display:flex;flex-wrap:wrap;gap:0.8em;align-items:flex-start;margin-top:0.4em">
<figure style="margin:0"><canvas class="lc-overlay" {canvas}></canvas><figcaption style="font-size:0.9em">Grad-CAM over the image</figcaption></figure>
<figure style="margin:0"><canvas class="lc-raw" {canvas}></canvas><figcaption style="font-size:0.9em">the raw {h}×{w} map</figcaption></figure>
<div style="display:flex;gap:0.3em"><canvas class="lc-bar" width="14" height="{size}" style="width:14px;height:{size}px"></canvas>
<div style="display:flex;flex-direction:column;justify-content:space-between;height:{size}px;font-size:0.85em"><span>1</span><span>0.5</span><span>0</span></div></div>
<table style="border-collapse:collapse;font-size:0.95em;margin:0;max-width:100%"><tbody>{rows}</tbody></table>
</div>
<script type="application/json" class="lc-data">{payload}</script>
<script>{_SCRIPT.replace("%UID%", uid)}</script>
</div>"""
