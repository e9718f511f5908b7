"""Issue 12.4 and 12.7: the step cache checks the files it trusts, and a bad manifest never stops a run."""

from __future__ import annotations

import json

import pytest

from reliability.support import TRACEBACK, cli, echo_run

TWO_STEPS = echo_run(passes='[[passes]]\ntype = "Echo"\nmessage = "one"\n'
                            '[[passes]]\ntype = "Echo"\nmessage = "two"\n')


def test_a_deleted_output_file_reruns_its_step_saying_why(workdir):
    (workdir / "run.toml").write_text(TWO_STEPS)
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0, output
    (workdir / "out" / "01-echo" / "echo.txt").unlink()
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0, output
    reason = [line for line in output.splitlines() if "echo.txt" in line]
    assert reason and ("missing" in reason[0] or "changed" in reason[0]), output
    manifest = json.loads((workdir / "out" / "manifest.json").read_text())
    assert manifest["steps"][0]["status"] == "ok", manifest["steps"][0]
    assert (workdir / "out" / "01-echo" / "echo.txt").read_text() == "one\n"


def test_verify_reruns_a_step_whose_output_changed_in_place(workdir):
    (workdir / "run.toml").write_text(TWO_STEPS)
    assert cli(["run", "run.toml"], workdir)[0] == 0
    echo = workdir / "out" / "01-echo" / "echo.txt"
    echo.write_text("ONE\n")  # same size: only the hash can tell
    code, output = cli(["run", "run.toml"], workdir)  # the cheap check (sizes) trusts it
    assert code == 0 and echo.read_text() == "ONE\n", output
    code, output = cli(["run", "run.toml", "--verify"], workdir)
    assert code == 0, output
    assert [line for line in output.splitlines() if "echo.txt" in line and "changed" in line], output
    assert echo.read_text() == "one\n"
    steps = json.loads((workdir / "out" / "manifest.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["ok", "ok"]  # the second step's input changed with it


BAD_MANIFESTS = {
    "list": "[]",
    "steps-null": '{"steps": null}',
    "steps-of-ints": '{"steps": [1, 2]}',
    "string": '"a string"',
    "not-json": '{"steps": [',
    "binary": "\x00\x01\x02",
}


@pytest.mark.parametrize("content", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_a_bad_manifest_is_moved_aside_with_one_warning(workdir, content):
    (workdir / "run.toml").write_text(TWO_STEPS)
    out = workdir / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0, output
    assert TRACEBACK not in output, output
    warnings = [line for line in output.splitlines() if "manifest.json" in line and "warning" in line.lower()]
    assert len(warnings) == 1, output
    aside = sorted(out.glob("manifest.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content, sorted(p.name for p in out.iterdir())
    assert aside[0].name in warnings[0], output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [s["status"] for s in manifest["steps"]] == ["ok", "ok"]


def test_the_manifest_records_each_file_with_its_size_and_hash(workdir):
    """What the cache checks: ``steps[i].files`` (size, sha256), from the same read as the step's content hash."""
    import hashlib

    from hostkit.fsutil import content_hash

    (workdir / "run.toml").write_text(TWO_STEPS)
    assert cli(["run", "run.toml"], workdir)[0] == 0
    step = json.loads((workdir / "out" / "manifest.json").read_text())["steps"][0]
    data = b"one\n"
    assert step["files"] == {"echo.txt": [len(data), "sha256:" + hashlib.sha256(data).hexdigest()]}
    assert step["content_hash"] == content_hash(workdir / "out" / "01-echo")
