"""Drive a built HTML book in headless Chromium and report what a reader would see go wrong.

    python tests/browser/check_book.py _build/html [--screenshots DIR] [--json REPORT] [--width 1280]

Every page (except the search and index pages) is opened from disk with the network blocked
(Chromium's --host-resolver-rules plus CDP Network.setBlockedURLs for http, https, ws) and fails when
- an image is broken (not loaded, or zero natural width);
- the text shows a traceback or a raw object repr ("<... object at 0x...>", a widget's "VBox(children=");
- an element sticks out of the text column (article.bd-article), or a box inside the column needs
  horizontal scrolling (scrollWidth > clientWidth); code *input* cells are exempt unless --strict-code;
  on a narrow window (< NARROW px, a phone) printed outputs, code and tables may scroll inside their own
  box (a 78-character line cannot fit a 368 px column), but the page itself never scrolls sideways;
- a display equation is wider than what shows it: cut by a box that clips it, or needing sideways
  scrolling (long equations are split over lines);
- a figure's smallest text is under MIN_TEXT_PX pixels on screen: the PNG records the smallest font
  size it drew in points and its DPI (lie_cam.plotting.png_bytes, text chunks FONT_KEY and DPI_KEY), so
  the text on screen is pt * dpi / 72 * (shown width / natural width); a figure without that record fails;
- a figure is shown twice on a page (the same image file, e.g. a raw copy above the captioned one);
- a kernel-free slider block ([data-lie-cam-slider], from lie_cam.explore.sliders) does not render with
  the network blocked, or one of its controls, moved through all its values from the defaults (Home, then
  ArrowRight step by step on a range input; each radio button clicked in turn), changes the picture (its
  canvases: the overlay, the raw map, the gauges) at no step ("changed nothing": not even the numbers;
  "changed only the numbers"); the report's "sliders" notes count the steps that changed each;
- the page asks for any network resource other than those matching --allow-external (default: the
  MathJax CDN, which only typesets equations; offline they show as TeX).
With --mathjax DIR (npm's mathjax@3 package folder, fetched by tests/browser/install.sh into
_build/mathjax) the equations are typeset from that local copy in place of the blocked CDN, so
that their width is checked too.
Every check runs at each --width (default: 1280 and 400 px, a desktop and a phone).
Exit status 1 when anything failed, 2 when the browser cannot be started. Screenshots of the
slider blocks (and of each slider page's window) go to --screenshots.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
DEFAULT_ALLOW = r"^https://cdn\.jsdelivr\.net/npm/mathjax@"
REPR = re.compile(r"<[A-Za-z_][\w.]* object at 0x[0-9a-fA-F]+>|\b(?:VBox|HBox|Box)\(children=|"
                  r"<IPython\.core\.display\.\w+ object>")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
BLOCKED = ["http://*", "https://*", "ws://*", "wss://*"]
WIDTHS = (1280, 400)       # px: a desktop and a phone
NARROW = 600               # px: below it, outputs, code and tables may scroll inside their own box
MIN_TEXT_PX = 9.0          # px: the smallest figure text on screen
FONT_KEY, DPI_KEY = "lie_cam:smallest_font_pt", "lie_cam:dpi"  # lie_cam.plotting's PNG text chunks

_OVERFLOW_JS = r"""
const strictCode = arguments[0];
const boxesScroll = arguments[1];  // a narrow window: outputs, code and tables scroll in their own box
const SCROLL_BOX = 'pre, .cell_output, .output, .highlight, .pst-scrollable-table-container, .table-wrapper, table';
const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const c = col.getBoundingClientRect();
const out = [];
const reported = new Set();
function describe(el) {
  let s = el.tagName.toLowerCase();
  if (el.id) s += '#' + el.id;
  if (el.className && typeof el.className === 'string') s += '.' + el.className.trim().split(/\s+/).slice(0, 2).join('.');
  // by code points: cutting a surrogate pair in two makes the result unreadable for WebDriver
  const t = Array.from((el.innerText || el.textContent || '').trim().replace(/\s+/g, ' ')).slice(0, 60).join('');
  return s + (t ? ' "' + t + '"' : '');
}
function exempt(el) {
  if (el.closest('mjx-assistive-mml, .visually-hidden, .sr-only, script, style, noscript')) return true;
  const math = el.closest('mjx-container');
  if (math && math !== el) return true;  // MathJax's own parts (a stretchy delimiter's clipped extender)
  if (!strictCode && el.closest('.cell_input, .cell .input')) return true;
  return false;
}
function clips(el) {
  const ox = getComputedStyle(el).overflowX;
  return ox !== 'visible';
}
for (const el of col.querySelectorAll('*')) {
  if (exempt(el)) continue;
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) continue;
  const style = getComputedStyle(el);
  if (style.visibility === 'hidden' || style.display === 'none') continue;
  // inline-level boxes (an inline equation's span.math) are checked against the column only: a glyph
  // clipped by a pixel or two inside the line is no overflow of the page
  if (!style.display.startsWith('inline') && clips(el) && el.scrollWidth > el.clientWidth + 2 && r.right <= c.right + 2) {
    if (el.matches('mjx-container, div.math') || (boxesScroll && el.matches(SCROLL_BOX))) continue;
    out.push({kind: 'scroll', what: describe(el), scroll: el.scrollWidth, box: el.clientWidth});
    continue;
  }
  if (r.right > c.right + 2 || r.left < c.left - 2) {
    let clipped = false;
    for (let a = el.parentElement; a && a !== col; a = a.parentElement) {
      if (clips(a) || reported.has(a)) { clipped = true; break; }
    }
    if (clipped) continue;
    reported.add(el);
    out.push({kind: 'overflow', what: describe(el), right: Math.round(r.right), column: Math.round(c.right)});
  }
}
return {column: [Math.round(c.left), Math.round(c.right)], problems: out.slice(0, 20), count: out.length};
"""

_PAGE_SCROLL_JS = r"""
const d = document.documentElement;
return {scroll: Math.max(d.scrollWidth, document.body.scrollWidth), window: d.clientWidth};
"""

_EQUATIONS_JS = r"""
// Each display equation: its typeset width against what shows it. Walking up from the equation, a box
// that clips (overflow hidden or clip) cuts it; a box that scrolls makes the reader scroll sideways.
const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const out = [];
for (const eq of col.querySelectorAll('mjx-container[display="true"]')) {
  const math = eq.querySelector('mjx-math') || eq;
  const r = math.getBoundingClientRect();
  if (r.width === 0) continue;
  const label = (eq.closest('div.math') || eq).querySelector('.eqno');
  const what = (label ? label.textContent.replace('#', '').trim() + ' ' : '') +
      Array.from((eq.textContent || '').replace(/\s+/g, ' ').trim()).slice(0, 50).join('');
  let verdict = null;
  for (let a = math.parentElement; a && a !== col.parentElement; a = a.parentElement) {
    const ox = getComputedStyle(a).overflowX;
    const b = a.getBoundingClientRect();
    if (ox === 'visible') continue;
    if (r.right > b.right + 2 || r.left < b.left - 2) {
      verdict = (ox === 'auto' || ox === 'scroll') ? 'scroll' : 'cut';
      break;
    }
  }
  if (!verdict && r.right > window.innerWidth + 2) verdict = 'cut';
  if (verdict) out.push({kind: verdict, what: what, width: Math.round(r.width)});
}
return out;
"""

_FIGURES_JS = r"""
const col = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
return [...col.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).map(i => ({
  src: i.currentSrc || i.src, natural: i.naturalWidth, shown: i.getBoundingClientRect().width}));
"""

_SNAPSHOT_JS = r"""
const root = arguments[0];
const canv = [...root.querySelectorAll('canvas.lc-overlay, canvas.lc-raw, canvas.lc-gauge')].map(c => c.toDataURL());
const nums = [...root.querySelectorAll('[data-number]')].map(td => td.textContent).join('|');
return {canvases: canv, numbers: nums, record: root.getAttribute('data-record')};
"""


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (keyword -> text), read without decoding the image."""
    import struct

    data, out, at = path.read_bytes(), {}, 8
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return out
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"tEXt":
            key, _, text = data[at + 8:at + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        if kind == b"IEND":
            break
        at += 12 + length
    return out


def _local_file(src: str) -> Path | None:
    from urllib.parse import unquote, urlparse

    url = urlparse(src)
    return Path(unquote(url.path)) if url.scheme == "file" else None


def check_figures(browser) -> list[str]:
    """Each figure (a PNG file in the text column) shown once, its smallest text at least MIN_TEXT_PX
    pixels on screen: pt * dpi / 72 pixels in the PNG, scaled by the width shown over the natural width."""
    problems, seen = [], {}
    for img in browser.execute_script(_FIGURES_JS):
        path = _local_file(img["src"])
        if path is None or path.suffix.lower() != ".png" or not path.is_file():
            continue
        seen.setdefault(path.read_bytes(), []).append(path.name)
        record = png_text(path)
        name = path.name[:24]
        try:
            pt, dpi = float(record[FONT_KEY]), float(record[DPI_KEY])
        except (KeyError, ValueError):
            problems.append(f"figure without a record of its smallest text (draw it with lie_cam.plotting.png_bytes): {name}")
            continue
        px = pt * dpi / 72 * img["shown"] / img["natural"]
        if px < MIN_TEXT_PX:
            problems.append(f"figure text {px:.1f} px on screen < {MIN_TEXT_PX:g} px: {name} ({pt:g} pt at {dpi:g} dpi, "
                            f"{img['natural']} px wide shown at {img['shown']:.0f} px)")
    problems += [f"figure shown {len(names)} times: {names[0][:24]}" for names in seen.values() if len(names) > 1]
    return problems


def check_layout(browser, width: int, strict_code: bool) -> tuple[list[str], list[int]]:
    """What sticks out of the text column or scrolls (boxes may scroll on a narrow window), the page's
    own sideways scroll, display equations cut or scrolling, figure text size and figures shown twice.
    Returns the problems and the text column's [left, right]."""
    problems = []
    layout = browser.execute_script(_OVERFLOW_JS, strict_code, width < NARROW)
    for o in layout["problems"]:
        if o["kind"] == "scroll":
            problems.append(f"wider than its box (needs horizontal scrolling, {o['scroll']} > {o['box']} px): {o['what']}")
        else:
            problems.append(f"sticks out of the text column (right edge {o['right']} > {o['column']} px): {o['what']}")
    if layout["count"] > len(layout["problems"]):
        problems.append(f"... and {layout['count'] - len(layout['problems'])} more layout problems")
    page = browser.execute_script(_PAGE_SCROLL_JS)
    if page["scroll"] > page["window"] + 1:
        problems.append(f"the page scrolls sideways ({page['scroll']} > {page['window']} px)")
    for eq in browser.execute_script(_EQUATIONS_JS):
        how = "cut off" if eq["kind"] == "cut" else "needs sideways scrolling (split it over lines)"
        problems.append(f"equation {how}, {eq['width']} px wide: {eq['what']}")
    return problems + check_figures(browser), layout["column"]


def find_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise FileNotFoundError("headless Chromium is missing: install Debian's chromium and chromium-driver "
                                "(make browser-deps, as root) and selenium (pip install '.[browser]')")
    return chromium, driver


def start_browser(width: int, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = find_browser()
    profile = tempfile.mkdtemp(prefix="lie-cam-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-extensions", "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": BLOCKED})
    browser.set_window_size(width, height)
    return browser, profile


def pages(root: Path) -> list[Path]:
    found = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root)
        if rel.parts[0].startswith("_") or p.name in SKIP_PAGES:
            continue
        found.append(p)
    return found


def _requests(browser) -> list[str]:
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _wait(browser, script: str, timeout: float = 8.0, *args) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if browser.execute_script(script, *args):
            return True
        time.sleep(0.1)
    return False


def _move(browser, control, keys) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", control)
    if control.get_attribute("type") == "range":
        ActionChains(browser).click(control).send_keys(keys).perform()
    else:
        control.click()


def _restore(browser, els, initial) -> None:
    """Puts a control back where it was (a range's value, the checked choice) and lets the block redraw."""
    for e, (value, selected) in zip(els, initial):
        if e.get_attribute("type") == "range":
            browser.execute_script("arguments[0].value = arguments[1];"
                                   "arguments[0].dispatchEvent(new Event('input'))", e, value)
        elif selected and not e.is_selected():
            _move(browser, e, None)


def _control_names(browser, block) -> list[str]:
    return browser.execute_script("return JSON.parse(arguments[0].querySelector('script.lc-data').textContent)"
                                  ".controls.map(c => c.name)", block) or []


def _walk(browser, block, els) -> list[dict]:
    """Every position of one control in order (a range: Home, then ArrowRight step by step; radio
    buttons: each clicked in turn), a snapshot of what the block shows at each."""
    from selenium.webdriver.common.keys import Keys

    from selenium.webdriver.common.action_chains import ActionChains

    states = []
    if els[0].get_attribute("type") == "range":  # focused, not clicked: a click moves the thumb to the pointer
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus()", els[0])
        for i, key in enumerate([Keys.HOME] + [Keys.ARROW_RIGHT] * (int(els[0].get_attribute("max"))
                                                                    - int(els[0].get_attribute("min")))):
            ActionChains(browser).send_keys(key).perform()
            states.append(browser.execute_script(_SNAPSHOT_JS, block))
    else:
        for e in els:
            _move(browser, e, None)
            states.append(browser.execute_script(_SNAPSHOT_JS, block))
    return states


def _check_control(browser, block, name: str, label: str, els) -> tuple[list[str], dict]:
    """Moves one control through its whole range from the defaults and puts it back; a problem when
    the picture (the overlay, the raw map, the gauges) changes at no step."""
    initial = [(e.get_attribute("value"), e.is_selected()) for e in els]
    before = browser.execute_script(_SNAPSHOT_JS, block)
    states = _walk(browser, block, els)
    _restore(browser, els, initial)  # the next control is moved from the defaults
    steps = list(zip(states, states[1:]))
    picture = sum(a["canvases"] != b["canvases"] for a, b in steps)
    maps = sum(a["canvases"][:2] != b["canvases"][:2] for a, b in steps)
    numbers = sum(a["numbers"] != b["numbers"] for a, b in steps)
    note = {"block": name, "control": label, "steps": len(steps), "picture_steps": picture, "map_steps": maps,
            "number_steps": numbers, "map_changed": maps > 0 or any(before["canvases"][:2] != s["canvases"][:2]
                                                                     for s in states),
            "numbers_changed": numbers > 0 or any(before["numbers"] != s["numbers"] for s in states)}
    problems = []
    if picture == 0 and numbers == 0:
        problems.append(f"{name}: moving control {label} changed nothing on the page")
    elif picture == 0:
        problems.append(f"{name}: moving control {label} through its {len(states)} values changed only the "
                        f"numbers, never the picture")
    return problems, note


def check_sliders(browser, page: str, shots: Path | None, width: int) -> tuple[list[str], list[dict]]:
    """Every kernel-free slider block of the page: it renders offline, and each of its controls,
    moved through all its values from the defaults, changes the picture at some step."""
    from selenium.webdriver.common.by import By

    problems, notes = [], []
    blocks = browser.find_elements(By.CSS_SELECTOR, "[data-lie-cam-slider]")
    for b, block in enumerate(blocks):
        name = f"slider {b + 1} ({block.get_attribute('data-lie-cam-slider')})"
        if not _wait(browser, "return arguments[0].hasAttribute('data-record')", 8.0, block):
            problems.append(f"{name}: did not render with the network blocked")
            continue
        if shots is not None:
            browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", block)
            stem = Path(page).stem
            block.screenshot(str(shots / f"{stem}-slider{b + 1}.png"))
            browser.save_screenshot(str(shots / f"{stem}-slider{b + 1}-window{width}.png"))
        groups: dict[str, list] = {}
        for el in block.find_elements(By.CSS_SELECTOR, "input[data-control]"):
            groups.setdefault(el.get_attribute("data-control"), []).append(el)
        if not groups:
            problems.append(f"{name}: no controls")
        labels = _control_names(browser, block)
        for j, els in groups.items():
            label = labels[int(j)] if int(j) < len(labels) else j
            found, note = _check_control(browser, block, name, label, els)
            problems += found
            notes.append(note)
    return problems, notes


_TYPESET_JS = r"""
const done = arguments[arguments.length - 1];
if (!document.querySelector('script[src*="mathjax"]') || !window.MathJax) { done('no math'); return; }
const s = document.createElement('script');
s.src = arguments[0];
s.onload = () => MathJax.startup.promise.then(() => done('typeset'), e => done('error: ' + e));
s.onerror = () => done('error: the local MathJax did not load');
document.head.appendChild(s);
"""


def check_page(browser, path: Path, root: Path, allow: re.Pattern, strict_code: bool, shots: Path | None,
               width: int, mathjax: Path | None = None) -> dict:
    browser.get_log("performance")  # drop what earlier pages left
    browser.get(path.resolve().as_uri())
    _wait(browser, "return document.readyState === 'complete'", 15.0)
    typeset = None
    if mathjax is not None:
        browser.set_script_timeout(60)
        typeset = browser.execute_async_script(_TYPESET_JS, (mathjax / "es5" / "tex-mml-chtml.js").resolve().as_uri())
    _wait(browser, "return [...document.images].every(i => i.complete)", 5.0)
    problems: list[str] = []
    if typeset and typeset.startswith("error"):
        problems.append(f"equations not typeset with the local MathJax: {typeset}")
    broken = browser.execute_script(
        "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => (i.getAttribute('src') || '').slice(0, 80) || '(no src)')")
    problems += [f"broken image: {src}" for src in broken]
    text = browser.execute_script("return document.body.innerText")
    if browser.execute_script("return document.querySelector('.output.traceback, .output.error') !== null"):
        problems.append("an error output cell in the page")
    for pattern, what in ((TRACEBACK, "traceback"), (REPR, "raw object repr")):
        m = pattern.search(text)
        if m:
            problems.append(f"{what} in the page: {m.group(0)[:80]!r}")
    slider_problems, notes = check_sliders(browser, str(path.relative_to(root)), shots, width)
    problems += slider_problems
    layout_problems, column = check_layout(browser, width, strict_code)
    problems += layout_problems
    external = sorted({u for u in _requests(browser) + browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
        if re.match(r"^(https?|wss?)://", u)})
    problems += [f"needs a network request: {u}" for u in external if not allow.search(u)]
    return {"page": str(path.relative_to(root)), "width": width, "problems": problems, "sliders": notes,
            "math": typeset, "allowed_external": [u for u in external if allow.search(u)], "column": column}


def slider_summary(reports: list[dict]) -> list[str]:
    """One line per slider control driven: at how many of its steps the picture (and the map) changed."""
    return [f"{r['page']} {n['block']} {n['control']}: picture changed at {n['picture_steps']} of {n['steps']} steps "
            f"(the map at {n['map_steps']})" for r in reports for n in r["sliders"] if "steps" in n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="the built HTML folder (e.g. _build/html)")
    parser.add_argument("--width", type=int, action="append",
                        help=f"window width in px, repeatable (default: {' and '.join(map(str, WIDTHS))})")
    parser.add_argument("--screenshots", type=Path, help="write screenshots of the slider blocks here")
    parser.add_argument("--json", type=Path, help="write the full report as JSON here")
    parser.add_argument("--allow-external", default=DEFAULT_ALLOW,
                        help=f"regex of network requests tolerated (default {DEFAULT_ALLOW!r})")
    parser.add_argument("--mathjax", type=Path, help="typeset equations with this local mathjax@3 package folder")
    parser.add_argument("--strict-code", action="store_true", help="also fail on code input cells that need scrolling")
    args = parser.parse_args(argv)
    if not args.html.is_dir():
        print(f"check_book: {args.html} is not a folder (expected the built HTML, e.g. _build/html)", file=sys.stderr)
        return 2
    found = pages(args.html)
    if not found:
        print(f"check_book: no HTML pages under {args.html}", file=sys.stderr)
        return 2
    if args.mathjax is not None and not (args.mathjax / "es5" / "tex-mml-chtml.js").is_file():
        print(f"check_book: {args.mathjax} has no es5/tex-mml-chtml.js (expected npm's mathjax@3 package)", file=sys.stderr)
        return 2
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    allow = re.compile(args.allow_external)
    reports = []
    for width in args.width or WIDTHS:
        try:
            browser, profile = start_browser(width)
        except Exception as error:  # the browser or selenium is missing, or Chromium did not start
            print(f"check_book: cannot start headless Chromium: {error}", file=sys.stderr)
            return 2
        try:
            for path in found:
                reports.append(check_page(browser, path, args.html, allow, args.strict_code, args.screenshots, width,
                                          args.mathjax))
        finally:
            browser.quit()
            shutil.rmtree(profile, ignore_errors=True)
    failed = [r for r in reports if r["problems"]]
    sliders = sum(len({n["block"] for n in r["sliders"]}) for r in reports)
    for r in reports:
        status = "FAIL" if r["problems"] else "ok"
        print(f"{status:4s} {r['width']:4d} px {r['page']}"
              + (f"  ({len({n['block'] for n in r['sliders']})} sliders)" if r["sliders"] else ""))
        for p in r["problems"]:
            print(f"     - {p}")
    for line in slider_summary(reports):
        print(f"     {line}")
    allowed = sorted({u for r in reports for u in r["allowed_external"]})
    if allowed:
        print(f"tolerated network requests (--allow-external): {', '.join(allowed)}")
    print(f"{len(found)} pages at {len(args.width or WIDTHS)} widths, {sliders} kernel-free sliders checked: "
          f"{len(failed)} page views with problems")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
