"""What ``import landscope`` does to the process: no environment variable set, no rich loaded;
the ``landscope`` command alone asks OpenMP for passive waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import landscope

REPORT = """
import json, os, sys
before = dict(os.environ)
import landscope
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
rich = sorted(m for m in sys.modules if m.split(".")[0] == "rich")
print(json.dumps({"changed": changed, "rich": rich, "omp": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _run(argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_importing_the_library_sets_no_variable_and_loads_no_rich():
    seen = _run(["-c", REPORT])
    assert seen == {"changed": [], "rich": [], "omp": None}


@pytest.mark.slow
def test_the_landscope_command_asks_for_passive_waiting(tmp_path):
    program = tmp_path / "landscope"  # what the console script is called
    program.write_text(REPORT)
    seen = _run([str(program)])
    assert seen["changed"] == ["OMP_WAIT_POLICY"] and seen["omp"] == "PASSIVE"


def test_the_doctor_report_is_still_importable_from_the_doctor():
    from landscope.doctor import diagnosis_report, report_text
    from landscope.render import doctor as rendering

    assert (report_text, diagnosis_report) == (rendering.report_text, rendering.diagnosis_report)
    with pytest.raises(AttributeError, match="no_such_name"):
        landscope.doctor.no_such_name  # noqa: B018


def test_the_build_reads_the_version_the_package_reports():
    from landscope import io

    read_configuration = pytest.importorskip("setuptools.config.pyprojecttoml").read_configuration

    pyproject = os.path.join(os.path.dirname(os.path.dirname(__file__)), "pyproject.toml")
    built = read_configuration(pyproject)["project"]["version"]
    assert built == landscope.__version__ == io.__version__
