"""The browser harness: a real headless Chromium finds exactly the broken images and empty sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import find_chromium, render_page
from PIL import Image

RED = (220, 30, 30)


def write_page(folder: Path, body: str, title: str = "Quality report") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    page.write_text(
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><nav><a href='#chart'>Chart</a> <a href='#numbers'>Numbers</a></nav>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )
    return page


def write_png(path: Path, size=(240, 120)) -> None:
    Image.new("RGB", size, RED).save(path)


CHART = '<section id="chart"><h2>Chart</h2><img src="chart.png" alt="chart"></section>'
TABLE = (
    '<section id="numbers"><h2>Numbers</h2>'
    "<table><tr><th>clips</th><th>kept</th></tr><tr><td>12</td><td>9</td></tr></table></section>"
)


def test_well_formed_page_has_no_problems(tmp_path):
    site = tmp_path / "report"
    page = write_page(site, CHART + TABLE)
    write_png(site / "chart.png")

    check = render_page(page, tmp_path / "shots" / "page.png", width=800, height=600)

    assert check.ok, (check.broken_images, check.empty_sections)
    assert check.sections == ["chart", "numbers"]
    assert check.title == "Quality report"
    assert check.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert check.screenshot_size == (800, 600)
    with Image.open(check.screenshot) as shot:
        assert RED in {color for _, color in shot.convert("RGB").getcolors(1 << 20)}, "image not drawn"
    assert sorted(p.name for p in site.iterdir()) == ["chart.png", "index.html"], "probe copy left behind"


def test_missing_image_and_empty_section_are_found(tmp_path):
    body = CHART + '<section id="gone"><h2>Gone</h2><img src="plots/missing.png"></section>'
    body += '<section id="empty"><h2>Nothing here</h2>\n  <div> </div></section>' + TABLE
    page = write_page(tmp_path, body)
    write_png(tmp_path / "chart.png")

    check = render_page(page, tmp_path / "shot.png", width=1024, height=768)

    assert check.broken_images == ["plots/missing.png"]
    assert check.empty_sections == ["empty"]
    assert check.sections == ["chart", "gone", "empty", "numbers"]
    assert check.screenshot_size == (1024, 768)
    assert not check.ok


def test_dom_is_checked_after_scripts_ran(tmp_path):
    """Sections filled by script after `load`, even after a timer, count as filled."""
    late = """
    <section id="late"><h2>Late</h2></section>
    <script>
      window.addEventListener("load", () => setTimeout(() => {
        const img = document.createElement("img");
        img.src = "chart.png";
        document.getElementById("late").append(img);
      }, 1500));
    </script>"""
    page = write_page(tmp_path, late)
    write_png(tmp_path / "chart.png")

    check = render_page(page, tmp_path / "shot.png")

    assert check.ok, (check.broken_images, check.empty_sections)
    assert check.screenshot_size == (1280, 2000)


def test_missing_browser_names_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="`chromium`"):
        find_chromium()
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-browser"))
    with pytest.raises(FileNotFoundError, match="CHROMIUM"):
        find_chromium()
