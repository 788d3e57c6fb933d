"""The README stays short, true and runnable: under 200 lines, every link in it and in docs/ resolves, every
`reelmill` command in its code blocks parses with the real CLI and loads its config, and every command in
it is one that a test or the demo runs. Also `reelmill --version` and `--print-config`, which the README
shows and which need no Ray and no video, so they run here in full."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from curation import config as config_lib
from jobs import cli
from jobs.job_configs import CurateJobConfig, EncodeConfig, RecaptionConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PRINTING_JOBS = ("curate", "recaption", "encode")

RUN_ELSEWHERE = {
    "make test": (ROOT / ".ci" / "run", "make test"),  # CI runs the README's test command itself
}
"""Commands that no pytest test runs, and the file that runs them (checked to say so)."""

NOT_RUN = {
    "curl": "downloads the aesthetic head's weights: tests and CI have no network",
}
"""Programs of README commands that nothing here can run, and why."""


def code_blocks(path: Path, languages: tuple[str, ...] = ("bash", "sh", "shell")) -> list[str]:
    """The fenced code blocks of a markdown file in one of `languages`."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), flags=re.M | re.S)
    return [body for lang, body in blocks if lang in languages]


def shell_commands(path: Path) -> list[list[str]]:
    """Every command line of the shell blocks, continuation lines joined, comments dropped, as words; a
    command after `--` (as `ray job submit ... -- reelmill curate ...`) is a command of its own too."""
    commands = []
    for block in code_blocks(path):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if ">" in words:  # a redirection ends the command's own words
                words = words[: words.index(">")]
            if "--" in words:
                cut = words.index("--")
                commands += [words[:cut], words[cut + 1 :]]
            else:
                commands.append(words)
    return [[Path(w[0]).name, *w[1:]] for w in commands]


def reelmill_commands(path: Path) -> list[list[str]]:
    """The arguments of each `reelmill` command (after the program name) in a file's shell blocks."""
    return [words[1:] for words in shell_commands(path) if words[0] == "reelmill"]


README_COMMANDS = reelmill_commands(README)
DOC_COMMANDS = [args for doc in DOCS for args in reelmill_commands(doc)]


def command_id(args: list[str]) -> str:
    return " ".join(args)[:80]


def test_readme_fits_in_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def relative_links(path: Path) -> list[str]:
    """Link targets outside code, except web addresses."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    links = relative_links(path)
    broken = []
    for link in links:
        file, _, anchor = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        if not target.exists():
            broken.append(f"{link}: no {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, broken


def test_the_readme_links_every_page_in_docs():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in relative_links(README)}
    assert not [d.name for d in DOCS if d.resolve() not in linked]


def test_the_readme_has_the_commands_it_promises():
    """The set-up, every job and the cluster recipe are in the README's code blocks."""
    firsts = {" ".join(w[:2]) for w in shell_commands(README)}
    assert {"make demo", "make test", "ray start", "ray job"} <= firsts
    subcommands = {args[0] for args in README_COMMANDS}
    assert {"curate", "recaption", "report", "encode", "train", "sample", "dedup", "--version"} <= subcommands
    assert any("--serve" in args for args in README_COMMANDS if args[0] == "report")


@pytest.mark.parametrize(
    "args", [a for a in README_COMMANDS + DOC_COMMANDS if a[0] not in ("train", "--version")], ids=command_id
)
def test_every_command_parses_with_the_real_cli(args):
    cli.build_parser().parse_args(args)  # argparse exits (status 2) on an unknown flag or a bad value


@pytest.mark.parametrize(
    "args", [a for a in README_COMMANDS + DOC_COMMANDS if a[0] == "train"], ids=command_id
)
def test_every_train_command_parses_with_lightning_cli(args, capsys, monkeypatch):
    from jobs.train import main as train_main

    monkeypatch.chdir(ROOT)  # a recipe given as a path (configs/train/...) is relative to the checkout

    with pytest.raises(SystemExit) as done:
        train_main([*args[1:], "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    for flag, value in zip(args, args[1:], strict=False):  # each --section.key value is in the config
        if flag.startswith("--data.") or flag.startswith("--trainer."):
            section, key = flag[2:].split(".", 1)
            assert str(printed[section][key]) == value or value in str(printed[section][key]), flag


def print_config(argv: list[str], capsys) -> tuple[int, str, str]:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("args", [a for a in README_COMMANDS if a[0] in PRINTING_JOBS], ids=command_id)
def test_every_readme_job_command_loads_its_config(args, capsys):
    """Each curate/recaption/encode command of the README, run with --print-config: its preset exists, its
    keys and values are valid, and each --set lands in the config it prints."""
    argv = args if "--print-config" in args else [*args, "--print-config"]
    status, out, err = print_config(argv, capsys)
    assert status == 0, err
    printed = yaml.safe_load(out)
    for flag, assignment in zip(args, args[1:], strict=False):
        if flag == "--set":
            dotted, raw = assignment.split("=", 1)
            node = printed
            for key in dotted.split("."):
                node = node[key]
            assert node == yaml.safe_load(raw), assignment


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"reelmill {importlib.metadata.version('reelmill')}"


@pytest.mark.parametrize(
    "job, cls, argv, expected",
    [
        (
            "curate", CurateJobConfig,
            ["--config", "fast", "--set", "clips.max_clip_s=8", "--set", "filters.mode=score-only",
             "--videos-per-task", "3", "--keep-dropped"],
            {("clips", "max_clip_s"): 8.0, ("filters", "mode"): "score-only", ("input", "videos_per_task"): 3,
             ("shards", "keep_dropped"): True, ("transcode", "max_short_side"): 360},
        ),
        (
            "recaption", RecaptionConfig,
            ["--set", "captioning.prompt_id=dense_v1", "--set", "input.shards_per_task=2"],
            {("captioning", "prompt_id"): "dense_v1", ("input", "shards_per_task"): 2},
        ),
        (
            "encode", EncodeConfig,
            ["--vae", "/models/vae", "--text-encoder", "/models/umt5", "--set", "frames.num_frames=9"],
            {("vae", "model"): "/models/vae", ("text_encoder", "model"): "/models/umt5",
             ("frames", "num_frames"): 9, ("frames", "fps"): 16.0},
        ),
    ],
    ids=["curate", "recaption", "encode"],
)  # fmt: skip
def test_print_config_loads_back_as_the_same_config(job, cls, argv, expected, tmp_path, capsys):
    """The printed YAML, given back as --config, is the config the flags made, key for key."""
    status, out, err = print_config([job, *argv, "--print-config"], capsys)
    assert status == 0, err
    printed = yaml.safe_load(out)
    for (section, key), value in expected.items():
        assert printed[section][key] == value, (section, key)
    saved = tmp_path / "printed.yaml"
    saved.write_text(out)
    again = config_lib.load(cls, job, str(saved), [])
    assert config_lib.to_dict(again) == printed
    # and printing the saved file's config prints it unchanged
    status, out_again, err = print_config([job, "--config", str(saved), "--print-config"], capsys)
    assert status == 0 and out_again == out, err


def test_the_fast_preset_is_what_the_expected_value_above_says():
    """`transcode.max_short_side: 360` in the test above comes from configs/curate/fast.yaml, read here."""
    fast = yaml.safe_load((ROOT / "configs" / "curate" / "fast.yaml").read_text())
    assert fast["transcode"]["max_short_side"] == 360


@pytest.mark.parametrize(
    "argv, message",
    [
        (["curate", "--set", "clips.max_clp_s=6"], "unknown config key 'clips.max_clp_s' (did you mean 'clips.max_clip_s'?)"),
        (["curate", "--set", "clips.min_clip_s=short"], "clips.min_clip_s: expected a number, got 'short'"),
        (["recaption", "--config", "no-such-preset"], "neither a YAML file nor a preset"),
        (["encode", "--set", "device=tpu"], "device: must be auto, cpu or cuda"),
    ],
    ids=["unknown-key", "bad-value", "no-preset", "bad-choice"],
)  # fmt: skip
def test_print_config_refuses_a_bad_key_or_value_with_exit_2(argv, message, capsys):
    status, out, err = print_config([*argv, "--print-config"], capsys)
    assert status == 2 and out == ""
    assert err.startswith(f"reelmill {argv[0]}: error: ") and message in err


def test_print_config_starts_no_ray_and_leaves_out_alone(tmp_path):
    """In a fresh process: nothing imports Ray, OUT is not created, and the console script exits 0."""
    out = tmp_path / "OUT"
    code = (
        "import sys; from jobs.cli import main; "
        f"status = main(['curate', '--input', 'nowhere/*.mp4', '--output', {str(out)!r}, '--print-config']); "
        "print('RAY' if 'ray' in sys.modules else 'NO RAY', file=sys.stderr); sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().endswith("NO RAY") and not out.exists()
    assert yaml.safe_load(done.stdout)["input"]["videos_per_task"] == 4  # configs/curate/default.yaml


def test_a_job_without_input_still_needs_it_to_run(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["curate", "--output", "somewhere"])
    assert done.value.code == 2
    assert "the following arguments are required: --input/-i" in capsys.readouterr().err


# -- every README command is run by a test or the demo ----------------------------------------------------


def test_sources() -> dict[str, set[str]]:
    """Per test file (this one aside), the string constants in it: the words of the commands it runs."""
    sources = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == Path(__file__).name:
            continue
        tree = ast.parse(path.read_text())
        constants = {
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        }
        imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "reelmill" in constants or imports & {"jobs.cli", "jobs.train"}:
            constants.add("<runs the reelmill CLI>")
        sources[path.name] = constants
    return sources


test_sources.__test__ = False  # a helper, not a test


def key_words(words: list[str]) -> list[str]:
    """What makes a command the command it is: its subcommand words (`ray job submit`, `reelmill train
    fit`, `make demo`) and its flags, not their values or its paths."""
    program, rest = words[0], words[1:]
    if program == "export":
        return [w.split("=", 1)[0] for w in rest]  # the variable a test must set
    leading = 2 if rest[:1] in (["job"], ["train"]) else 1
    subcommand = [w for w in rest[:leading] if not w.startswith("-")]
    return [*subcommand, *(w.split("=", 1)[0] for w in rest if w.startswith("-"))]


@pytest.mark.parametrize("words", shell_commands(README), ids=lambda w: command_id(w))
def test_every_readme_command_is_run_by_a_test_or_the_demo(words):
    line = " ".join(words)
    if words[0] in NOT_RUN:
        return
    for prefix, (path, says) in RUN_ELSEWHERE.items():
        if line.startswith(prefix):
            assert says in path.read_text(), f"{path} no longer runs {prefix!r}"
            return
    if words[0] == "reelmill" and ({"--version", "--print-config"} & set(words)):
        return  # this module runs these itself, verbatim (tests above)
    keys = key_words(words)
    needed = {*keys, "<runs the reelmill CLI>"} if words[0] == "reelmill" else set(keys)
    runners = [name for name, constants in test_sources().items() if needed <= constants]
    assert runners, f"no test runs `{line}` (a test file using every one of {sorted(needed)})"
