import pytest

import agglib


def test_set_is_a_context_manager_and_restores():
    before = agglib.config.get("workers")
    with agglib.config.set(workers=1):
        assert agglib.config.get("workers") == 1
    assert agglib.config.get("workers") == before


def test_set_persists_without_with():
    before = agglib.config.get("max_draws")
    try:
        agglib.config.set(max_draws=17)
        assert agglib.config.get("max_draws") == 17
    finally:
        agglib.config.set(max_draws=before)


def test_unknown_key_names_known_keys():
    with pytest.raises(KeyError, match="known keys"):
        agglib.config.set(not_a_key=1)
    with pytest.raises(KeyError, match="unknown agglib config key"):
        agglib.config.get("nope")


def test_user_file_overrides_defaults(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("workers: 3\n")
    monkeypatch.setenv("AGGLIB_CONFIG", str(f))
    try:
        agglib.config.reset()
        assert agglib.config.get("workers") == 3
    finally:
        monkeypatch.delenv("AGGLIB_CONFIG")
        agglib.config.reset()


def test_profiles_load_and_override():
    p = agglib.load_profile("tiny", fig4_aggregates=7)
    assert p.fig4_aggregates == 7 and p.name == "tiny"
    assert agglib.load_profile("paper").fig4_aggregates == 19440
    with pytest.raises(ValueError, match=r"profile='huge' is unknown; accepted: \['bremen2023', 'paper', 'quick', 'tiny'\]"):
        agglib.load_profile("huge")
    with pytest.raises(ValueError, match="unknown profile fields"):
        agglib.load_profile("tiny", epochs=3)
    with pytest.raises(ValueError, match=r"tiny.batch_size=0 is out of range"):
        agglib.load_profile("tiny", batch_size=0)
