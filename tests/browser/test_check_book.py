"""The book checker, on small hand-made pages in headless Chromium: it passes a sound page and fails
one with a broken image, an overflowing or scrolling table, a traceback, a raw repr, a frozen
kernel-free slider, a slider whose numbers move but whose picture does not, or a network request; and, at
400 px, a page that scrolls sideways, an equation cut off or scrolling, a figure whose text is too small on
screen or has no record of it, a figure shown twice (while outputs and tables may scroll inside their own
box there, not at 1280 px). Chromium, chromedriver and selenium are installed by
tests/browser/install.sh when missing; where that cannot be done the test fails (never skips)."""

import json
import shutil
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import pytest

from lie_cam.data import synthetic_split
from lie_cam.explore.sliders import precompute

HERE = Path(__file__).parent
CHECKER = HERE / "check_book.py"
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _page(body: str) -> str:
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body style="margin:0">'
            f'<div style="display:flex"><article class="bd-article" style="width:700px;padding:0 10px">{body}'
            f'</article><aside style="width:300px">toc</aside></div></body></html>')


@pytest.fixture(scope="module")
def browser_ready() -> None:
    def ready() -> bool:
        try:
            import selenium  # noqa: F401
        except ImportError:
            return False
        return bool((shutil.which("chromium") or shutil.which("chromium-browser")) and shutil.which("chromedriver"))

    if not ready():
        done = subprocess.run(["bash", str(HERE / "install.sh"), sys.executable], capture_output=True, text=True)
        if done.returncode != 0 or not ready():
            pytest.fail(f"headless Chromium could not be installed (tests/browser/install.sh): {done.stderr[-500:]}")


@pytest.fixture(scope="module")
def slider_block(small_vgg):
    x, _, _ = synthetic_split("test", 1)
    return precompute("T4", small_vgg(seed=3), x,
                      points={"eps": (1e-2, 1.0), "stickers": (False, True), "c_F": (1e9, 1e11)})


@pytest.fixture(scope="module")
def site(tmp_path_factory, slider_block):
    good = _page(f'<h1>A chapter</h1><p>Text.</p><img src="{PIXEL}" width="20"><table><tr><td>a</td><td>b</td></tr>'
                 f"</table>{slider_block.html()}")
    frozen = slider_block
    frozen = type(frozen)(frozen.technique, frozen.controls, frozen.points, [frozen.records[0]] * len(frozen.records))
    # issue 22's T4: eps moves the numbers, never the picture (each record drawn as the one at the first
    # eps, the outermost control), while the stickers still change everything
    assert slider_block.controls[0].name == "eps"
    per_eps = len(slider_block.records) // len(slider_block.points[0])
    still = [replace(r, map=at.map, image=at.image, score_change=at.score_change, map_share=at.map_share,
                     params={**r.params, "eps": at.params["eps"]})
             for r, at in zip(slider_block.records, slider_block.records[:per_eps] * len(slider_block.points[0]))]
    numbers_only = type(frozen)(frozen.technique, frozen.controls, frozen.points, still)
    pages = {
        "good.html": good,
        "broken_image.html": _page('<p>x</p><img src="figures/missing.png" alt="a figure">'),
        "wide_table.html": _page("<table><tr>" + "".join(f"<td>column_{i}_value</td>" for i in range(40)) + "</tr></table>"),
        "scroll_table.html": _page('<div style="overflow-x:auto"><table><tr>'
                                   + "".join(f"<td>column_{i}_value</td>" for i in range(40)) + "</tr></table></div>"),
        "traceback.html": _page("<pre>Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: no</pre>"),
        "repr.html": _page("<pre>&lt;lie_cam.widgets.T1Explorer object at 0x7f3a2b1c9d90&gt;</pre>"),
        "frozen_slider.html": _page(frozen.html()),
        "numbers_only_slider.html": _page(numbers_only.html()),
        "network.html": _page('<p>x</p><script src="https://cdn.example.org/embed-amd.js"></script>'),
    }
    root = tmp_path_factory.mktemp("site")
    for name, text in pages.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def _run(folder: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    """The checker's exit status and its report per page, at the one width given (default 1280 px)."""
    extra = extra if "--width" in extra else (*extra, "--width", "1280")
    report = tmp_path / f"{folder.name}.json"
    done = subprocess.run([sys.executable, str(CHECKER), str(folder), "--json", str(report), *extra],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 2: the browser did not start
    return done.returncode, {r["page"]: r for r in json.loads(report.read_text())}


def test_checker_fails_each_bad_page_and_passes_the_good_one(browser_ready, site, slider_block, tmp_path):
    code, pages = _run(site, tmp_path, "--screenshots", str(tmp_path / "shots"))
    assert code == 1
    problems = {name: " | ".join(r["problems"]) for name, r in pages.items()}
    assert problems["good.html"] == "", problems["good.html"]
    assert "broken image: figures/missing.png" in problems["broken_image.html"]
    assert "sticks out of the text column" in problems["wide_table.html"]
    assert "needs horizontal scrolling" in problems["scroll_table.html"]
    assert "traceback" in problems["traceback.html"]
    assert "raw object repr" in problems["repr.html"]
    assert "changed nothing" in problems["frozen_slider.html"]
    assert "control eps through its 2 values changed only the numbers, never the picture" in \
        problems["numbers_only_slider.html"]
    assert "control stickers" not in problems["numbers_only_slider.html"]
    assert "needs a network request: https://cdn.example.org/embed-amd.js" in problems["network.html"]
    # the good page's slider was really driven: each of its controls through every value, as Python predicts
    moves = pages["good.html"]["sliders"]
    assert [m["control"] for m in moves] == ["eps", "stickers", "c_F"]
    for m in moves:
        assert m["steps"] == len(slider_block.points[[s.name for s in slider_block.controls].index(m["control"])]) - 1
        assert (m["picture_steps"], m["map_steps"]) == slider_block.changes(m["control"])[:2], m
    assert (tmp_path / "shots" / "good-slider1.png").stat().st_size > 1000


def test_checker_exit_status_is_zero_on_a_sound_site(browser_ready, site, tmp_path):
    sound = tmp_path / "sound"
    sound.mkdir()
    shutil.copy(site / "good.html", sound / "index.html")
    code, pages = _run(sound, tmp_path)
    assert code == 0 and pages["index.html"]["problems"] == []


def test_the_page_draws_what_python_computes(browser_ready, site, slider_block):
    """The inline renderer, read back from its canvases: the overlay is the record's map, bilinearly
    upsampled as lie_cam.gradcam.upsample, in jet, blended 50 % over the image; the raw canvas holds
    the 14 x 14 map cell by cell; the numbers are the record's."""
    import base64
    import io

    import torch
    from PIL import Image
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(HERE))
    import check_book
    from lie_cam.gradcam import upsample
    from lie_cam.explore.sliders import colormap_lut

    browser, profile = check_book.start_browser(1280)
    try:
        browser.get((site / "good.html").resolve().as_uri())
        block = browser.find_element(By.CSS_SELECTOR, "[data-lie-cam-slider]")
        assert check_book._wait(browser, "return arguments[0].hasAttribute('data-record')", 10.0, block)
        read = ("const c = arguments[0].querySelector(arguments[1]); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let s = ''; for (let i = 0; i < d.length; i++) "
                "s += String.fromCharCode(d[i]); return btoa(s);")
        overlay = torch.tensor(list(base64.b64decode(browser.execute_script(read, block, "canvas.lc-overlay"))))
        raw = torch.tensor(list(base64.b64decode(browser.execute_script(read, block, "canvas.lc-raw"))))
        record = slider_block.records[int(block.get_attribute("data-record"))]
        numbers = [td.text for td in block.find_elements(By.CSS_SELECTOR, "[data-number]")]
        src = browser.execute_script("const D = JSON.parse(arguments[0].querySelector('script.lc-data').textContent);"
                                     "return D.images[D.records[arguments[1]].image]", block,
                                     int(block.get_attribute("data-record")))
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)
    assert record.params["stickers"] is True  # the default shown: with stickers
    lut = torch.tensor(list(colormap_lut())).reshape(256, 3).double()
    q = (record.map.double().clamp(0, 1) * 255).round()
    size = record.image.shape[-1]
    heat = (upsample(q[None], size)[0] + 0.5).floor().clamp(0, 255).long()  # JavaScript's Math.round
    pixels = torch.tensor(list(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB").tobytes()))
    pixels = pixels.reshape(size, size, 3).double()
    expected = (0.5 * pixels + 0.5 * lut[heat] + 0.5).floor()
    shown = overlay.reshape(size, size, 4)[..., :3].double()
    diff = (shown - expected).abs()
    assert diff.mean() < 0.01 and diff.max() <= 1, (diff.mean(), diff.max())  # float32 vs float64 rounding
    cell = size // q.shape[0]
    centres = raw.reshape(size, size, 4)[cell // 2::cell, cell // 2::cell, :3].double()
    assert torch.equal(centres, lut[q.long()])
    assert numbers[0] == f"{record.score_change:.2g}" and numbers[4] == f"{record.l1:.3g}"


# --- the page layout on a phone (400 px) ---------------------------------------------------------------

def _narrow_page(body: str) -> str:
    """A page whose text column follows the window, as the book's theme does."""
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f'<title>t</title></head><body style="margin:0"><article class="bd-article" style="box-sizing:border-box;'
            f'width:100%;padding:0 10px">{body}</article></body></html>')


def _equation(box_style: str, width: int) -> str:
    """A display equation as MathJax's CHTML output lays it out: a block container in a div.math."""
    return (f'<div class="math" style="{box_style}"><span class="eqno">(1.1)</span><mjx-container jax="CHTML" '
            f'display="true" style="display:block"><mjx-math style="display:inline-block;width:{width}px">x = y'
            f'</mjx-math></mjx-container></div>')


def _figure_png(font_pt: float, record: bool = True) -> bytes:
    """A 6.4 in wide figure with one text of `font_pt` points, as lie_cam.plotting saves it (with the record
    of its smallest text), or saved by plain matplotlib (without it)."""
    import io

    from matplotlib.figure import Figure

    from lie_cam.plotting import png_bytes

    fig = Figure(figsize=(6.4, 2.0))
    fig.text(0.5, 0.5, "a label", fontsize=font_pt)
    if record:
        return png_bytes(fig, dpi=100)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def phone_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("phone")
    (root / "fig").mkdir()
    for name, data in {"good": _figure_png(12), "other": _figure_png(14), "small": _figure_png(5),
                       "bare": _figure_png(12, record=False)}.items():
        (root / "fig" / f"{name}.png").write_bytes(data)
    img = '<figure style="margin:0"><img src="fig/{}.png" style="max-width:100%"><figcaption>Fig.</figcaption></figure>'
    wide_row = "".join(f"<td>column_{i}_value</td>" for i in range(20))
    pages = {
        "good.html": _narrow_page(
            "<h1>A chapter</h1><p>Text.</p>" + img.format("good") + img.format("other")
            + f'<div class="pst-scrollable-table-container" style="overflow-x:auto"><table><tr>{wide_row}</tr></table></div>'
            + '<div class="cell_output"><pre style="overflow-x:auto">' + "x" * 200 + "</pre></div>"
            + _equation("overflow-x:auto", 300)),
        "page_scroll.html": _narrow_page('<div style="width:700px">a banner wider than the phone</div>'),
        "cut_equation.html": _narrow_page(_equation("overflow:hidden", 600)),
        "scroll_equation.html": _narrow_page(_equation("overflow-x:auto", 600)),
        "small_text.html": _narrow_page(img.format("small")),
        "no_record.html": _narrow_page(img.format("bare")),
        "twice.html": _narrow_page('<img src="fig/good.png" style="max-width:100%">' + img.format("good")),
    }
    for name, text in pages.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_checker_fails_each_bad_phone_page_and_passes_the_good_one(browser_ready, phone_site, tmp_path):
    """At 400 px and at 1280 px in one run. On a phone the good page's table and 200-character output line
    scroll inside their own boxes; at 1280 px, where the column holds about 78 characters, the output's
    scroll bar is a problem."""
    report = tmp_path / "phone.json"
    done = subprocess.run([sys.executable, str(CHECKER), str(phone_site), "--json", str(report)],  # default widths
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    views = {(r["page"], r["width"]): " | ".join(r["problems"]) for r in json.loads(report.read_text())}
    problems = {page: text for (page, width), text in views.items() if width == 400}
    assert problems["good.html"] == "", problems["good.html"]
    assert "the page scrolls sideways" in problems["page_scroll.html"]
    assert "equation cut off, 600 px wide: (1.1)" in problems["cut_equation.html"]
    assert "equation needs sideways scrolling" in problems["scroll_equation.html"]
    assert "figure text 4.1 px on screen < 9 px: small.png (5 pt at 100 dpi, 640 px wide shown at 380 px)" \
        in problems["small_text.html"]
    assert "figure without a record of its smallest text" in problems["no_record.html"]
    assert problems["twice.html"] == "figure shown 2 times: good.png"  # at 12 pt, 9.9 px: legible
    wide = views["good.html", 1280]
    assert "needs horizontal scrolling" in wide and "pre" in wide
    assert "figure" not in wide and "equation" not in wide


def test_png_text_reads_the_record_of_lie_cam_plotting(tmp_path):
    sys.path.insert(0, str(HERE))
    import check_book

    from lie_cam.plotting import DPI_KEY, FONT_KEY

    assert (check_book.FONT_KEY, check_book.DPI_KEY) == (FONT_KEY, DPI_KEY)
    (tmp_path / "a.png").write_bytes(_figure_png(11))
    (tmp_path / "b.png").write_bytes(_figure_png(11, record=False))
    assert {k: v for k, v in check_book.png_text(tmp_path / "a.png").items() if k.startswith("lie_cam")} == \
        {FONT_KEY: "11", DPI_KEY: "100"}
    assert FONT_KEY not in check_book.png_text(tmp_path / "b.png")
