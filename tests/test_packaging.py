"""reelmill as a wheel: every package and preset ships, and the commands run from an installed wheel in a
working directory with no checkout (as on a cluster image or under a `runtime_env` pip install)."""

import json
import os
import subprocess
import tomllib
from pathlib import Path

from conftest import ROOT
from curation import synthetic
from curation.synthetic import VideoSpec, shot_list

CODE_PACKAGES = ("curation", "captioning", "training", "jobs")


def source_packages() -> set[str]:
    """Every directory of the source tree that holds files, as the import name it installs under."""
    found = set()
    for top, name in [(p, p) for p in CODE_PACKAGES] + [("configs", "reelmill_configs")]:
        for directory, _, files in os.walk(ROOT / top):
            rel = Path(directory).relative_to(ROOT / top)
            if "__pycache__" not in rel.parts and any(not f.endswith(".pyc") for f in files):
                found.add(".".join([name, *rel.parts]))
    return found


def installed_site(wheel_install: Path) -> Path:
    (site,) = (wheel_install.parent / "lib").glob("python3*/site-packages")
    return site


def test_pyproject_lists_every_package_of_the_source_tree():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(listed) == source_packages()


def test_the_wheel_holds_every_preset_recipe_and_prompt(wheel_install):
    site = installed_site(wheel_install)
    shipped = [*ROOT.glob("configs/*/*.yaml"), *ROOT.glob("captioning/prompts/*.txt")]
    assert len(shipped) >= 7
    for source in shipped:
        rel = source.relative_to(ROOT)
        if rel.parts[0] == "configs":
            rel = Path("reelmill_configs", *rel.parts[1:])
        assert (site / rel).read_bytes() == source.read_bytes(), rel


def test_curate_runs_from_the_wheel_in_a_directory_with_no_checkout(wheel_install, tmp_path):
    video = synthetic.make_video(tmp_path / "in" / "two_shots.mp4", VideoSpec(shot_list([60, 60]), 160, 120))
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [wheel_install / "python", "-c", "import curation, reelmill_configs; print(curation.__file__)"],
        cwd=work, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(wheel_install.parent))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    done = subprocess.run(
        [wheel_install / "reelmill", "curate", "--input", video, "--output", tmp_path / "out", "--config", "fast",
         "--set", "scoring.aesthetic.enabled=false", "--set", "captioning.enabled=false", "--num-cpus", "1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["counts"]["videos_ok"] == 1 and run["counts"]["clips_kept"] == 2
    assert run["config"]["transcode"]["preset"] == "ultrafast"  # the `fast` preset, read from the wheel


def test_train_finds_its_recipe_by_name_from_the_wheel(wheel_install, tmp_path):
    done = subprocess.run(
        [wheel_install / "reelmill", "train", "fit", "--config", "dit-tiny-cpu", "--print_config"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = (ROOT / "configs" / "train" / "dit-tiny-cpu.yaml").read_text()
    # the printed config carries the recipe's values (its default_root_dir, a value no default has)
    root_dir = next(
        line.split(":", 1)[1].split("#")[0].strip()
        for line in recipe.splitlines()
        if "default_root_dir" in line
    )
    assert f"default_root_dir: {root_dir}" in done.stdout
