from pathlib import Path

import pytest

from portal.settings import Secret, Settings, SettingsError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_every_setting_is_documented_in_operations_md():
    text = DOCS.read_text()
    missing = [name for name in Settings.documented_names() if f"`{name}`" not in text]
    assert missing == []


def test_defaults_live_in_the_data_dir(tmp_path):
    settings = Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path)})
    assert settings.data_dir == tmp_path
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'megamovie.db'}"
    assert settings.storage_url == (tmp_path / "objects").as_uri()
    assert settings.quota_bytes == 50 * 1000**3


def test_environment_values_are_parsed_by_type(tmp_path):
    settings = Settings.from_env(
        {
            "MEGAMOVIE_DATA_DIR": str(tmp_path),
            "MEGAMOVIE_PORT": "9001",
            "MEGAMOVIE_SEGMENT_SECONDS": "2.5",
            "MEGAMOVIE_SECURE_COOKIES": "yes",
            "MEGAMOVIE_STORAGE_URL": "s3://films/prod",
        }
    )
    assert settings.port == 9001
    assert settings.segment_seconds == 2.5
    assert settings.secure_cookies is True
    assert settings.storage_url == "s3://films/prod"


def test_overrides_win_over_environment(tmp_path):
    env = {"MEGAMOVIE_DATA_DIR": str(tmp_path), "MEGAMOVIE_PORT": "9001"}
    assert Settings.from_env(env, port=7000).port == 7000


def test_bad_value_names_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="MEGAMOVIE_PORT"):
        Settings.from_env({"MEGAMOVIE_DATA_DIR": str(tmp_path), "MEGAMOVIE_PORT": "eighty"})


def test_secrets_never_show_in_repr(tmp_path):
    settings = Settings.from_env(
        {
            "MEGAMOVIE_DATA_DIR": str(tmp_path),
            "MEGAMOVIE_MASTER_KEYS": "k1:c2VjcmV0LWtleS1tYXRlcmlhbA==",
            "AWS_SECRET_ACCESS_KEY": "hunter2-aws",
        }
    )
    shown = repr(settings) + str(settings)
    assert "c2VjcmV0" not in shown
    assert "hunter2" not in shown
    assert isinstance(settings.master_keys, Secret)
    assert settings.master_keys.reveal() == "k1:c2VjcmV0LWtleS1tYXRlcmlhbA=="
