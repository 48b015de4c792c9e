"""``bench/run.py`` says which interpreter its servers ran on and how it was built: the
figures depend on it (see Interpreter in ``bench/README.md``)."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from benchmod import bench_run


def test_the_probe_reports_this_interpreter_as_it_is() -> None:
    run = bench_run()
    facts = run.interpreter(sys.executable)
    assert facts["version"] == sys.version.split()[0]
    assert facts["base"] == sys._base_executable
    with open("/proc/self/maps") as maps:
        assert facts["libpython_shared"] == any("libpython" in line for line in maps)
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    assert facts["configured_optimizations"] == ("--enable-optimizations" in config)
    assert facts["configured_lto"] == ("--with-lto" in config)
    note = run.interpreter_note(facts)
    assert f"Python {facts['version']}" in note and facts["base"] in note


def test_an_interpreter_that_does_not_start_is_reported_not_guessed(tmp_path: Path) -> None:
    run = bench_run()
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    broken.chmod(0o755)
    facts = run.interpreter(str(broken))
    assert facts == {"error": "broken"}
    assert run.interpreter_note(facts) == "interpreter unknown (broken)"
