"""The command line's Ray options: `--runtime-env` parsing and what run.json says of a runtime_env."""

import pytest

from curation.config import ConfigError
from jobs.ray_runtime import described_runtime_env, load_runtime_env


def test_runtime_env_inline_json_or_a_yaml_file(tmp_path):
    assert load_runtime_env('{"env_vars": {"A": "1"}}') == {"env_vars": {"A": "1"}}
    path = tmp_path / "env.yaml"
    path.write_text("env_vars:\n  A: '1'\npip: [numpy]\n")
    assert load_runtime_env(str(path)) == {"env_vars": {"A": "1"}, "pip": ["numpy"]}


@pytest.mark.parametrize(
    ("value", "message"),
    [("{bad", "not valid JSON/YAML"), ("/no/such/env.yaml", "neither JSON nor a readable file")],
)
def test_a_bad_runtime_env_is_a_one_line_config_error(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_runtime_env(value)
    assert "\n" not in str(caught.value)


def test_a_runtime_env_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_runtime_env(str(path))


def test_run_json_names_env_vars_without_their_values():
    described = described_runtime_env({"env_vars": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}, "pip": ["x"]})
    assert described == {"env_vars": ["AWS_SECRET_ACCESS_KEY"], "pip": ["x"]}
    assert "s3cr3t" not in str(described)
    assert described_runtime_env(None) is None
