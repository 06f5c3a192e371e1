"""Draw the landing page's teaser, book/images/teaser.png: one test image, its honest Grad-CAM and
two lies of the same network (T2's smiley; T4 triggered by stickers), with the predictions unchanged.

    python tools/make_teaser.py      # a few seconds on a CPU, embedded profile, deterministic
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "book" / "images" / "teaser.png"


def teaser():
    import torch

    from lie_cam.book import setup
    from lie_cam.data import paste_stickers
    from lie_cam.gradcam import gradcam
    from lie_cam.plotting import map_grid
    from lie_cam.attacks import paper_networks

    torch.manual_seed(0)
    ch = setup(n=1, profile="embedded", device="cpu")
    networks = paper_networks(ch.model)
    x_sticker, _ = paste_stickers(ch.x, seeds=[0])
    honest, t2 = gradcam(ch.model, ch.x), gradcam(networks["T2"], ch.x)
    t4 = gradcam(networks["T4"], x_sticker)
    same = bool((honest.classes == t2.classes).all() and (gradcam(ch.model, x_sticker).classes == t4.classes).all())
    if not same:
        raise RuntimeError("a manipulated network changed a prediction: the teaser would not be honest")
    c = ch.name(honest.classes[0])
    panels = [(ch.x[0], None, "image"), (ch.x[0], honest.maps[0], "honest Grad-CAM"),
              (ch.x[0], t2.maps[0], "T2: a smiley"), (x_sticker[0], t4.maps[0], "T4: the stickers")]
    notes = [f"class {c}"] + [f"predicts {c}"] * 3
    return map_grid(panels, ncols=4, notes=notes)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    from lie_cam.plotting import png_bytes

    OUT.write_bytes(png_bytes(teaser(), dpi=100))  # with its smallest font in the PNG (the book check reads it)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
