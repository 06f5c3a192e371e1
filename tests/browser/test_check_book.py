"""The book checker, on small hand-made pages in headless Chromium: it passes a sound page and fails
one with a broken image, an overflowing or scrolling table, a traceback, a raw repr, a frozen
kernel-free slider, a slider whose numbers move but whose picture does not, or a network request. Chromium, chromedriver and selenium are installed by
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
