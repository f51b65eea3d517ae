"""Settings: defaults < YAML file < RAG_* environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from rag_core.settings import ConfigFileError, load_settings

YAML = """\
index_dir: {index_dir}
embedding_model: yaml-model
chroma_url: http://yaml-chroma:8000
redis_url: redis://yaml-redis:6379/0
llm_base_url: http://yaml-llm/v1
llm_model: yaml-llm
llm_api_key: yaml-secret
chunking:
  chunk_size: 300
  chunk_overlap: 30
ingest:
  extensions: ["PDF", ".Txt"]
  max_file_mb: 2
  pdf_passwords: ["first", "second"]
  keep_versions: 3
"""

ENV_OVERRIDES = {
    "RAG_EMBEDDING_MODEL": "env-model",
    "RAG_CHROMA_URL": "http://env-chroma:9000",
    "RAG_REDIS_URL": "redis://env-redis:6380/1",
    "RAG_LLM_BASE_URL": "http://env-llm/v1",
    "RAG_LLM_MODEL": "env-llm",
}


def write_yaml(directory: Path, text: str, name: str = "rag.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def yaml_file(clean_rag_env: Path) -> Path:
    return write_yaml(clean_rag_env / "conf", YAML.format(index_dir=clean_rag_env / "yaml-index"))


def test_defaults_without_any_file_or_environment(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(clean_rag_env / "xdg"))
    settings = load_settings()

    assert settings.index_dir == clean_rag_env / "xdg" / "rag-service" / "index"
    assert settings.index_dir.is_absolute()
    assert settings.embedding_model == "auto"
    assert settings.embedding_device == "auto"
    assert settings.embedding_query_instruction == "auto"
    assert settings.chroma_url is None
    assert settings.redis_url is None
    assert settings.llm_base_url is None
    assert settings.llm_model is None
    assert settings.llm_api_key is None
    assert settings.chunking.chunk_size == 512
    assert settings.chunking.chunk_overlap == 64
    assert settings.chunking.separators == ["\n\n", "\n", ". ", " ", ""]
    assert {".pdf", ".txt", ".md", ".docx", ".pptx", ".xlsx", ".csv", ".html", ".epub", ".odt", ".png", ".jpg", ".tif"} <= set(
        settings.ingest.extensions
    )
    assert settings.ingest.max_file_mb == 50.0
    assert settings.ingest.passwords == []
    assert settings.ingest.ocr.enabled and settings.ingest.ocr.languages == ["eng", "fra", "nld", "kor"]
    assert settings.ingest.keep_versions == 5
    assert settings.ingest.lock_timeout_s == 0.0


def test_yaml_file_values_replace_defaults(yaml_file: Path, clean_rag_env: Path) -> None:
    settings = load_settings(yaml_file)

    assert settings.index_dir == clean_rag_env / "yaml-index"
    assert settings.embedding_model == "yaml-model"
    assert settings.chroma_url == "http://yaml-chroma:8000"
    assert settings.redis_url == "redis://yaml-redis:6379/0"
    assert settings.llm_base_url == "http://yaml-llm/v1"
    assert settings.llm_model == "yaml-llm"
    assert settings.llm_api_key.get_secret_value() == "yaml-secret"
    assert (settings.chunking.chunk_size, settings.chunking.chunk_overlap) == (300, 30)
    assert settings.ingest.extensions == [".pdf", ".txt"]  # normalised: dot added, lower case
    assert settings.ingest.max_file_mb == 2.0
    # The older name `pdf_passwords` still sets the passwords (now also tried on Office files).
    assert [p.get_secret_value() for p in settings.ingest.passwords] == ["first", "second"]
    assert settings.ingest.keep_versions == 3
    # Keys the file does not set keep their defaults.
    assert settings.embedding_device == "auto"
    assert settings.ingest.embed_batch_size == 64


def test_environment_wins_over_yaml(yaml_file: Path, clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV_OVERRIDES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RAG_INDEX_DIR", str(clean_rag_env / "env-index"))
    monkeypatch.setenv("RAG_LLM_API_KEY", "env-secret")

    settings = load_settings(yaml_file)

    assert settings.index_dir == clean_rag_env / "env-index"
    assert settings.embedding_model == "env-model"
    assert settings.chroma_url == "http://env-chroma:9000"
    assert settings.redis_url == "redis://env-redis:6380/1"
    assert settings.llm_base_url == "http://env-llm/v1"
    assert settings.llm_model == "env-llm"


def test_llm_api_key_from_environment_is_a_secret(yaml_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_LLM_API_KEY", "env-secret")
    settings = load_settings(yaml_file)

    assert isinstance(settings.llm_api_key, SecretStr)
    assert settings.llm_api_key.get_secret_value() == "env-secret"
    assert "env-secret" not in repr(settings)
    assert "env-secret" not in str(settings.model_dump())


def test_nested_environment_variable_overrides_one_yaml_key(yaml_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHUNKING__CHUNK_SIZE", "256")
    settings = load_settings(yaml_file)

    assert settings.chunking.chunk_size == 256
    assert settings.chunking.chunk_overlap == 30  # the sibling key still comes from the YAML file


def test_relative_index_dir_from_environment_becomes_absolute(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_INDEX_DIR", "relative/index")
    assert load_settings().index_dir == clean_rag_env / "relative" / "index"


def test_blank_url_in_environment_means_unset(yaml_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHROMA_URL", "  ")
    assert load_settings(yaml_file).chroma_url is None


def test_explicit_overrides_win_over_environment(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_EMBEDDING_MODEL", "env-model")
    assert load_settings(embedding_model="override-model").embedding_model == "override-model"


@pytest.mark.parametrize("size, overlap", [(100, 100), (100, 150)])
def test_chunk_overlap_not_below_chunk_size_is_rejected(clean_rag_env: Path, size: int, overlap: int) -> None:
    config = write_yaml(clean_rag_env, f"chunking:\n  chunk_size: {size}\n  chunk_overlap: {overlap}\n")
    with pytest.raises(ValidationError, match="chunk_overlap must be smaller"):
        load_settings(config)


def test_chunk_overlap_check_applies_to_environment_values(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CHUNKING__CHUNK_SIZE", "64")  # default overlap is 64
    with pytest.raises(ValidationError, match="chunk_overlap must be smaller"):
        load_settings()


def test_unknown_yaml_key_is_rejected(clean_rag_env: Path) -> None:
    config = write_yaml(clean_rag_env, "embeding_model: typo\n")
    with pytest.raises(ValidationError, match="embeding_model"):
        load_settings(config)


def test_missing_explicit_config_file_raises(clean_rag_env: Path) -> None:
    with pytest.raises(ConfigFileError, match="config file not found"):
        load_settings(clean_rag_env / "does-not-exist.yaml")


def test_missing_file_named_by_rag_config_raises(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CONFIG", str(clean_rag_env / "nope.yaml"))
    with pytest.raises(ConfigFileError):
        load_settings()


def test_rag_config_environment_variable_selects_the_file(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(clean_rag_env / "elsewhere", "embedding_model: from-rag-config\n")
    monkeypatch.setenv("RAG_CONFIG", str(config))
    assert load_settings().embedding_model == "from-rag-config"


def test_explicit_file_wins_over_rag_config(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_CONFIG", str(write_yaml(clean_rag_env, "embedding_model: from-env-file\n", "a.yaml")))
    explicit = write_yaml(clean_rag_env, "embedding_model: from-explicit-file\n", "b.yaml")
    assert load_settings(explicit).embedding_model == "from-explicit-file"


def test_configs_rag_yaml_in_working_directory_is_the_default_file(clean_rag_env: Path) -> None:
    write_yaml(clean_rag_env / "configs", "embedding_model: from-cwd-configs\n")
    assert load_settings().embedding_model == "from-cwd-configs"


def test_no_config_file_in_working_directory_means_defaults(clean_rag_env: Path) -> None:
    assert not (clean_rag_env / "configs").exists()
    assert load_settings().embedding_model == "auto"


def test_passwords_come_from_the_environment_under_either_name(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_INGEST__PASSWORDS", '["office", "pdf"]')
    assert [p.get_secret_value() for p in load_settings().ingest.passwords] == ["office", "pdf"]
    monkeypatch.delenv("RAG_INGEST__PASSWORDS")
    monkeypatch.setenv("RAG_INGEST__PDF_PASSWORDS", '["legacy"]')
    assert [p.get_secret_value() for p in load_settings().ingest.passwords] == ["legacy"]


def test_older_password_name_in_the_environment_adds_to_the_file_setting(clean_rag_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # configs/rag.yaml sets `passwords: []`; a deployment that still exports the older variable
    # must not lose its passwords to the file's empty list.
    config = clean_rag_env / "rag.yaml"
    config.write_text('ingest:\n  passwords: ["from-file"]\n')
    monkeypatch.setenv("RAG_INGEST__PDF_PASSWORDS", '["from-env", "from-file"]')
    assert [p.get_secret_value() for p in load_settings(config).ingest.passwords] == ["from-file", "from-env"]
