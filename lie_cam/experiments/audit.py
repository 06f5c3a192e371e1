"""The audit of one model file: `python -m lie_cam audit MODEL [--arch NAME] [--images DIR] [--out DIR]`.

Loads MODEL without running code from it (`lie_cam.audit.loading`), runs every self-relative check
(`lie_cam.audit.auditing.audit`), prints a one-screen summary and writes, moved into DIR together:

    audit.json    the verdict, each check's score, threshold and evidence, the images and layer used
    report.md     the same for a person: the verdict, the checks, the maps, the randomisation test and
                  the trigger search
    report.html   the same page as HTML (the figure embedded)
    maps.png      the images and the maps of several CAM methods side by side, and the Grad-CAM of the
                  model with a re-initialised logits layer (the randomisation test)

Exit code (returned by `run_audit`'s result): 0 no evidence of manipulation, 1 evidence; the command
line turns anything that stops the audit into one line and exit code 2.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

import torch

from lie_cam.audit.auditing import AuditResult, audit, folder_images, summary_lines
from lie_cam.audit.loading import load_audited
from lie_cam.experiments.output import check_output_dir, staged_output
from lie_cam.plotting import markdown_table

__all__ = ["AUDIT_FILES", "run_audit", "audit_markdown", "audit_html", "maps_figure"]

AUDIT_FILES = ("audit.json", "report.md", "report.html", "maps.png")
_SHOWN = 4  # images drawn in maps.png


def maps_figure(result: AuditResult):
    """Rows: up to 4 images; columns: the image, then each CAM method's map (min-max scaled, as tools show them)."""
    from matplotlib.figure import Figure

    methods = list(result.maps)
    rows, cols = min(_SHOWN, len(result.pixels)), 1 + len(methods)
    fig = Figure(figsize=(min(6.4, 1.05 * cols), 1.05 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        image = result.pixels[r].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[r, 0].imshow(image)
        for c, method in enumerate(methods, 1):
            axes[r, c].imshow(image)
            axes[r, c].imshow(torch.nn.functional.interpolate(result.maps[method][r][None, None].float(),
                              size=image.shape[:2], mode="bilinear")[0, 0].numpy(), cmap="jet", alpha=0.5,
                              vmin=0, vmax=1)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    for c, method in enumerate(methods, 1):
        title = "random logits" if method.startswith("randomised") else method.split("/")[-1]
        axes[0, c].set_title(title.replace("GradCAMPlusPlus", "GradCAM++"), fontsize=9)
    return fig


def _check_rows(result: AuditResult) -> list[dict]:
    return [{"check": c.name, "verdict": "FLAGGED" if c.flagged else "ok",
             "score": "n/a" if c.score is None else f"{c.score:.4g}", "limit": f"{c.threshold:g}",
             "evidence": c.evidence} for c in result.checks]


def audit_markdown(result: AuditResult) -> str:
    """The report for a person, in Markdown (maps.png beside it)."""
    by_key = {c.key: c for c in result.checks}
    randomisation, trigger = by_key.get("randomisation"), by_key.get("trigger")
    methods = ", ".join(m for m in result.maps if not m.startswith("randomised"))
    parts = [
        f"# Audit of {result.model}",
        f"**Verdict: {result.verdict}** (exit code {result.exit_code}).",
        f"Images: {result.images}. Grad-CAM's layer: `{result.layer}`. {result.seconds:.0f} s.",
        "## Checks",
        ("Each check judges the model against itself (its own layers, channels, noise) or against an invariance "
         "every faithful explanation has; the limits and their reasons are in `lie_cam.audit.calibration`."),
        markdown_table([{**r, "evidence": r["evidence"].replace("|", "\\|")} for r in _check_rows(result)],
                       ["check", "verdict", "score", "limit", "evidence"]),
        "## Maps",
        (f"The same images under several CAM methods ({methods}), and in the last column Grad-CAM of the model "
         "with its logits layer re-initialised. A manipulated model shows the same (flat, planted or "
         "random) map under every gradient method; the honest maps differ between methods and follow the objects."),
        "![maps](maps.png)",
        "## Randomisation test",
        randomisation.evidence if randomisation else "not run.",
        "## Trigger search",
        trigger.evidence if trigger else "not run.",
    ]
    if trigger and trigger.details:
        parts.append(markdown_table([{"what": k, "value": str(v)} for k, v in trigger.details.items()]))
    return "\n\n".join(parts) + "\n"


def audit_html(result: AuditResult, png: bytes) -> str:
    """The report as one HTML page, the figure embedded as a data URL."""
    rows = "".join(f"<tr><td>{html.escape(r['check'])}</td><td><b>{r['verdict']}</b></td><td>{r['score']}</td>"
                   f"<td>{r['limit']}</td><td>{html.escape(r['evidence'])}</td></tr>" for r in _check_rows(result))
    by_key = {c.key: c for c in result.checks}
    image = base64.b64encode(png).decode()
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>Audit of {html.escape(result.model)}</title><style>body{{font-family:sans-serif;max-width:60em;"
            f"margin:auto;padding:1em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px}}"
            f"img{{max-width:100%}}</style></head><body><h1>Audit of {html.escape(result.model)}</h1>"
            f"<p><b>Verdict: {html.escape(result.verdict)}</b> (exit code {result.exit_code}).</p>"
            f"<p>Images: {html.escape(result.images)}. Grad-CAM's layer: <code>{html.escape(result.layer)}</code>.</p>"
            f"<h2>Checks</h2><table><tr><th>check</th><th>verdict</th><th>score</th><th>limit</th><th>evidence</th>"
            f"</tr>{rows}</table><h2>Maps</h2><p>The same images under several CAM methods; last column: Grad-CAM "
            f"with the logits layer re-initialised.</p><img alt='maps' src='data:image/png;base64,{image}'>"
            f"<h2>Randomisation test</h2><p>{html.escape(by_key['randomisation'].evidence if 'randomisation' in by_key else 'not run')}</p>"
            f"<h2>Trigger search</h2><p>{html.escape(by_key['trigger'].evidence if 'trigger' in by_key else 'not run')}</p>"
            f"</body></html>\n")


def run_audit(model: str, out: str | Path, arch: str | None = None, images: str | Path | None = None,
              layer: str | None = None, architecture: bool = True, progress: bool = True) -> AuditResult:
    """Load MODEL (`load_audited`), audit it, print the summary and write `AUDIT_FILES` into `out`
    (checked first; moved in together). Returns the result (its exit_code: 0 or 1)."""
    out = check_output_dir(out, AUDIT_FILES)
    log = (lambda message: print(message, file=sys.stderr, flush=True)) if progress else None
    loaded, how = load_audited(str(model), arch)
    pixels, described = folder_images(images, loaded) if images is not None else (None, None)
    result = audit(loaded, pixels, described, layer=layer, architecture=architecture, name=f"{model} ({how})",
                   progress=log)
    print("\n".join(summary_lines(result)))
    with staged_output(out, AUDIT_FILES) as stage:
        (stage / "audit.json").write_text(json.dumps({**result.as_dict(), "command": "audit"}, indent=1) + "\n")
        (stage / "report.md").write_text(audit_markdown(result))
        maps_figure(result).savefig(stage / "maps.png", dpi=100)
        (stage / "report.html").write_text(audit_html(result, (stage / "maps.png").read_bytes()))
    return result
