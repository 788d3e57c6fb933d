"""The clip browser's HTML shell: clips.html loads the data scripts and the page's script and style.

The page is static (everything is drawn by `browser.js` from the data files), so the shell is a few
lines; the script and style ship beside this module and are copied into `report/browser/` unchanged.
"""

from __future__ import annotations

import html
import os
import shutil

from captioning.report.browser.data import CLIPS_DATA, DATA_DIR, REJECTED_DATA, RUN_DATA

PAGE = "clips.html"
STATIC = ("browser.js", "browser.css")

SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="browser/browser.css">
</head>
<body>
<header class="top"><h1>Clip browser</h1><a href="index.html">quality report</a></header>
<nav class="tabs" role="tablist"></nav>
<main>
<div class="view" id="view-clips"></div>
<div class="view" id="view-tuning"></div>
<div class="view" id="view-rejected"></div>
<div class="view" id="view-facts"></div>
</main>
<noscript>The clip browser needs JavaScript.</noscript>
<script src="{run}"></script>
<script src="{rejected}"></script>
<script src="{clips}"></script>
<script src="browser/browser.js"></script>
</body>
</html>
"""


def write_page(directory: str, title: str) -> None:
    """Write clips.html and copy the script and style into `directory`/browser/."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(directory, DATA_DIR), exist_ok=True)
    for name in STATIC:
        shutil.copyfile(os.path.join(here, name), os.path.join(directory, DATA_DIR, name))
    with open(os.path.join(directory, PAGE), "w") as f:
        f.write(
            SHELL.format(title=html.escape(title), run=RUN_DATA, rejected=REJECTED_DATA, clips=CLIPS_DATA)
        )
