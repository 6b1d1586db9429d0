import pytest
from pydantic import ValidationError

from lungct.config import ServeConfig


def test_serve_config_reads_environment(monkeypatch):
    monkeypatch.setenv("LUNGCT_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("LUNGCT_MODEL_TAG", "lungct:abc")
    config = ServeConfig.from_env()
    assert config.max_batch_size == 8 and config.model_tag == "lungct:abc"
    assert config.max_upload_bytes == ServeConfig().max_upload_bytes


def test_invalid_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LUNGCT_MAX_BATCH_SIZE", "1")
    with pytest.raises(ValidationError, match="max_batch_size"):
        ServeConfig.from_env()
