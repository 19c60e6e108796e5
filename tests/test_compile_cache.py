"""config.compilation_cache (jaxnoise/compile_cache.py): the field's validation, which folder it
means, and a run that writes jax's persistent compilation cache there and, loading from it,
gives exactly the metrics of the run that compiled."""

from __future__ import annotations

import os

import jax
import pytest

from configs import quickstart
from jaxnoise import compile_cache, inputs, loops, runkit, workdir
from jaxnoise import config as config_lib
from tests._signal_run import set_fields


def tiny(**overrides):
    """The quickstart cut to one CE epoch of 4 equal batches on 200 digits (one train step)."""
    c = quickstart.get_config()
    c.method, c.epochs, c.lr_milestones = "CE", 1, ()
    c.width, c.bootstrap.batch_size, c.data.subset_per_class = 4, 50, 20
    c.log_every_seconds = 0.0
    return set_fields(c, **overrides)


@pytest.fixture
def jax_cache_restored():
    """The session's cache settings (tests/conftest.py) are put back after the test."""
    saved = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compile_cache.jax_cache.reset_cache()


@pytest.mark.parametrize("value", ["auto", "", "none", "{tmp}/new/sub", "{tmp}"])
def test_valid_settings(value, tmp_path):
    config_lib.validate(tiny(compilation_cache=value.format(tmp=tmp_path)))


def test_invalid_settings_name_the_field(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for value, why in (
        (str(a_file), "a file of that name exists"),
        (str(a_file / "sub"), f"{a_file} is not a writable folder"),
    ):
        with pytest.raises(ValueError, match="config.compilation_cache") as e:
            config_lib.validate(tiny(compilation_cache=value))
        assert why in str(e.value)
    d = tiny().to_dict()  # ml_collections keeps a field's type; a dict config may not
    for value in (1, None, "/tmp/a\0b"):
        d["compilation_cache"] = value
        with pytest.raises(
            ValueError,
            match=r"config.compilation_cache = .* is not allowed: "
            "'auto', '' or 'none' \\(off\\), or a folder$",
        ):
            config_lib.validate(d)


def test_which_folder(tmp_path):
    env = {"HOME": "/home/u"}
    home = os.path.join(os.path.expanduser("~"), ".cache", "jaxnoise", "xla")
    assert compile_cache.resolve("auto", env) == home
    assert compile_cache.resolve("auto", {"XDG_CACHE_HOME": "/c"}) == "/c/jaxnoise/xla"
    assert compile_cache.resolve("auto", {"XDG_CACHE_HOME": "rel"}) == home  # not absolute
    assert compile_cache.resolve("", env) is None and compile_cache.resolve("none", env) is None
    assert compile_cache.resolve(str(tmp_path / "x"), env) == str(tmp_path / "x")
    assert compile_cache.resolve("rel/x", env) == os.path.join(os.getcwd(), "rel", "x")
    for setting in ("auto", "", "none", "/elsewhere"):  # the caller's variable wins
        assert compile_cache.resolve(setting, {compile_cache.ENV: "/mine"}) == "/mine"


def test_a_folder_that_cannot_be_made_is_an_error(tmp_path, monkeypatch, jax_cache_restored):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="config.compilation_cache = .*cannot create"):
        compile_cache.configure(str(tmp_path / "file" / "sub"))
    assert compile_cache.configure("none") is None
    assert jax.config.jax_compilation_cache_dir is None


def test_resuming_with_another_cache_setting_is_allowed(tmp_path):
    c = tiny()
    resolved = runkit.fingerprint(c)
    workdir.write_run_info(str(tmp_path), resolved, inputs.load_data(c), c)
    resolved["compilation_cache"] = "none"
    workdir.check_workdir_config(str(tmp_path), resolved, fresh=False)  # no conflict


def test_a_run_writes_the_cache_and_a_cached_run_gives_the_same_metrics(
    tmp_path, monkeypatch, jax_cache_restored
):
    """One epoch compiles and writes its programs into config.compilation_cache; a second run
    of the same config loads them from there (cache hits) and its metrics are identical."""
    from jaxnoise import report

    monkeypatch.delenv(compile_cache.ENV, raising=False)  # tests/conftest.py sets one
    monkeypatch.setattr(report, "write_report", lambda wd: {})  # figures: not tested here
    cache = tmp_path / "xla"
    hits = []

    def listen(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    c = tiny(compilation_cache=str(cache))
    first = loops.train_and_evaluate(c, str(tmp_path / "a"))
    assert jax.config.jax_compilation_cache_dir == str(cache)
    entries = [f for f in os.listdir(cache) if f.endswith("-cache")]
    assert entries, os.listdir(cache)
    jax.monitoring.register_event_listener(listen)
    try:
        second = loops.train_and_evaluate(c, str(tmp_path / "b"))
    finally:
        jax.monitoring.unregister_event_listener(listen)
    assert hits  # the second run's new jitted functions were loaded, not compiled
    timing = ("seconds", "images_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in first["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in second["history"]]
    assert first["history"][0]["test_acc"] > 0
