"""Finding inputs (directory, glob, manifests) and grouping them into deterministic tasks."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.curate_config import VIDEO_EXTENSIONS
from curation.inputs import InputError, expand_input_shards, expand_inputs, make_tasks


@pytest.fixture()
def tree(tmp_path):
    for rel in ["a/one.mp4", "a/b/two.MOV", "three.webm", "notes.txt.bak", "a/cover.jpg"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path


def test_directory_is_searched_recursively_for_video_suffixes(tree):
    found = expand_inputs([str(tree)], VIDEO_EXTENSIONS)
    assert [p.replace(str(tree) + "/", "") for p in found] == ["a/b/two.MOV", "a/one.mp4", "three.webm"]


def test_glob_and_duplicates(tree):
    found = expand_inputs([f"{tree}/**/*.mp4", str(tree / "a" / "one.mp4")], VIDEO_EXTENSIONS)
    assert found == [str(tree / "a" / "one.mp4")]


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet", "jsonl"])
def test_manifests_with_relative_and_absolute_entries(tree, kind):
    entries = ["a/one.mp4", str(tree / "three.webm")]
    manifest = tree / f"list.{kind}"
    if kind == "txt":
        manifest.write_text("# my videos\n" + "\n".join(entries) + "\n\n")
    elif kind == "csv":
        manifest.write_text("uri,label\n" + "\n".join(f"{e},x" for e in entries) + "\n")
    elif kind == "parquet":
        pq.write_table(pa.table({"uri": entries}), manifest)
    else:
        manifest.write_text("\n".join(json.dumps({"uri": e}) for e in entries))
    assert expand_inputs([str(manifest)], VIDEO_EXTENSIONS) == [
        str(tree / "a" / "one.mp4"),
        str(tree / "three.webm"),
    ]


def test_manifest_without_uri_column_is_an_error(tree):
    manifest = tree / "bad.csv"
    manifest.write_text("path\nx.mp4\n")
    with pytest.raises(InputError, match="no 'uri' column"):
        expand_inputs([str(manifest)], VIDEO_EXTENSIONS)


def test_missing_input_and_empty_match_are_errors(tree):
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([str(tree / "nope")], VIDEO_EXTENSIONS)
    with pytest.raises(InputError, match="matches no video files"):
        expand_inputs([f"{tree}/*.avi"], VIDEO_EXTENSIONS)


def test_tasks_are_deterministic_groups():
    uris = [f"/v/{i:02d}.mp4" for i in range(7)]
    tasks = make_tasks(uris, 3)
    assert [t.uris for t in tasks] == [tuple(uris[0:3]), tuple(uris[3:6]), tuple(uris[6:7])]
    assert [t.name for t in tasks] == ["000000", "000001", "000002"]
    assert make_tasks(list(uris), 3) == tasks


def test_a_job_refuses_input_shards_inside_its_own_output(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out" / "shards").mkdir(parents=True)
    for path in (tmp_path / "in" / "a.tar", tmp_path / "out" / "shards" / "b.tar"):
        path.write_bytes(b"")
    assert expand_input_shards([str(tmp_path / "in")], str(tmp_path / "out")) == [
        str(tmp_path / "in" / "a.tar")
    ]
    with pytest.raises(InputError, match="lies inside --output"):
        expand_input_shards([str(tmp_path / "out")], str(tmp_path / "out"))


def test_bad_jsonl_lines_are_left_out_and_an_unreadable_manifest_is_an_error(tree, capsys):
    good = tree / "a.mp4"
    manifest = tree / "list.jsonl"
    manifest.write_text(f'{{"uri": "{good}"}}\nnot json\n{{"path": "x.mp4"}}\n[1, 2]\n')
    assert expand_inputs([str(manifest)], VIDEO_EXTENSIONS) == [str(good)]
    assert "3 line(s) without a 'uri' left out (first: line 2)" in capsys.readouterr().err
    broken = tree / "list.parquet"
    broken.write_bytes(b"this is no parquet file")
    with pytest.raises(InputError, match="list.parquet: manifest cannot be read"):
        expand_inputs([str(broken)], VIDEO_EXTENSIONS)


def test_a_glob_match_named_like_a_command_comes_back_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipe:touch pwned.tar").write_bytes(b"")
    assert expand_input_shards(["*.tar"], str(tmp_path / "out")) == [str(tmp_path / "pipe:touch pwned.tar")]
    assert expand_input_shards(["pipe:cat x.tar"], str(tmp_path / "out")) == ["pipe:cat x.tar"]
