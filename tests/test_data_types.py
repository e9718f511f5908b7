"""Data types are registered by plugins: a third-party type used by a pass from a run file.

hostkit-echo (tests/_plugin) registers ``type = "lines"`` with its own options class;
the host knows only a table's name, type and path.
"""

from __future__ import annotations

import attrs
import pytest

from hostkit import DataTable, DataTypeSpec, PassSpec, hookimpl, option
from hostkit.plugins import PluginHost, PluginRecord

RUN = """
[model]
type = "HfModel"
path = "m"

[data.notes]
type = "lines"
path = "notes.txt"
{options}

[[passes]]
type = "Echo"
train_data_config = "notes"

[output]
dir = "out"
"""


@pytest.fixture
def notes(workdir):
    (workdir / "m").mkdir()
    (workdir / "notes.txt").write_text("# a comment\nfirst\n\nsecond\nthird\n")
    return workdir


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def test_a_plugins_data_type_feeds_its_pass(run_toml, notes):
    plain = run_toml(RUN.format(options=""), workdir=notes)
    assert plain.exit_code == 0, plain.output
    assert (notes / "out" / "01-echo" / "lines.txt").read_text() == "5"
    options = run_toml(RUN.format(options='skip_blank = true\ncomment = "#"'), workdir=notes)
    assert options.exit_code == 0, options.output
    assert (notes / "out" / "01-echo" / "lines.txt").read_text() == "3"
    assert options.manifest["config"]["data"]["notes"] == {"type": "lines", "path": "notes.txt", "skip_blank": True,
                                                          "comment": "#"}


def test_its_options_are_checked_with_their_toml_path(run_toml, notes):
    result = run_toml(RUN.format(options='skip_blnk = true\nmin_lines = 0\ncomment = 3'), workdir=notes,
                      command="validate")
    assert result.exit_code == 2
    for expected in ("data.notes.skip_blnk: unknown key (did you mean 'skip_blank'?)",
                     "data.notes.min_lines: must be > 0, got 0",
                     "data.notes.comment: expected a string, got integer 3"):
        assert expected in result.output, result.output
    missing = run_toml(RUN.format(options="").replace('path = "notes.txt"', 'path = "nope.txt"'), workdir=notes,
                       command="validate")
    assert f"data.notes.path: {notes / 'nope.txt'} does not exist" in missing.output
    unknown = run_toml(RUN.format(options="").replace('type = "lines"', 'type = "line"'), workdir=notes,
                       command="validate")
    line = [x for x in unknown.output.splitlines() if "data.notes.type" in x]
    assert line and "got 'line' (did you mean 'lines'?)" in line[0] and "jsonl" in line[0], unknown.output
    failing = run_toml(RUN.format(options="min_lines = 9"), workdir=notes)
    assert failing.exit_code == 1
    assert "data.notes.min_lines: " in failing.output and "has 5 lines left, fewer than 9" in failing.output


def test_schema_of_a_data_type(run_toml, notes):
    from hostkit.cli import main

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema", "lines"]) == 0
    text = out.getvalue()
    assert text.startswith("# data type lines: a text file, one example per line [hostkit-echo 0.3.0]")
    assert '[data.NAME]\ntype = "lines"' in text and "skip_blank = false" in text


def test_data_type_classes_extend_the_hosts_table_and_names_are_unique():
    host = PluginHost.isolated()

    @attrs.frozen
    class Loose:
        path: str = option(help="x")

    class Bad:
        @hookimpl
        def hostkit_register(self, register):
            register.data_type(DataTypeSpec("loose", Loose))

    record = host.add_plugin(Bad(), PluginRecord(name="bad"))
    assert record.status == "broken" and "config_cls must subclass hostkit.data.DataTable" in record.error

    @attrs.frozen
    class Mine(DataTable):
        pass

    class One:
        @hookimpl
        def hostkit_register(self, register):
            register.data_type(DataTypeSpec("mine", Mine))
            register.pass_type(PassSpec(name="P", config_cls=Mine, summary="x", run="x:y"))

    assert host.add_plugin(One(), PluginRecord(name="one")).status == "loaded"
    again = host.add_plugin(One(), PluginRecord(name="two"))
    assert again.status == "broken" and "data type 'mine' is already provided by one" in again.error


def test_gguf_models_are_converted_by_a_plugin_not_the_host(plugin_host, run_toml, tmp_path):
    # the host alone (no hostkit-lora) does not import transformers: it says which plugin converts GGUF
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.gguf").write_bytes(b"GGUF")
    result = run_toml('[model]\ntype = "HfModel"\npath = "m"\ngguf_file = "x.gguf"\n[[passes]]\ntype = "Nothing"\n',
                      host=plugin_host, command="validate")
    assert result.exit_code == 2  # no passes installed on this host; the model table itself is valid
    assert "model.gguf_file" not in result.output
    missing = run_toml('[model]\ntype = "HfModel"\npath = "m"\ngguf_file = "y.gguf"\n', host=plugin_host,
                       command="validate")
    assert f"model.gguf_file: {tmp_path / 'm' / 'y.gguf'} does not exist" in missing.output  # option(within="path")
    from hostkit import HfModel
    from hostkit.builtin.models import hostkit_load_model
    from hostkit.errors import PassError

    with pytest.raises(PassError, match="model.gguf_file: no installed plugin loads HfModel handles with gguf_file set"):
        hostkit_load_model(HfModel(path=str(tmp_path / "m"), gguf_file="x.gguf"), None)
    discovered = PluginHost.discover(env={})
    impls = [i.plugin_name for i in discovered.pm.hook.hostkit_load_model.get_hookimpls()]
    assert "lora" in impls
