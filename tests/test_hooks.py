"""Every hook of a run is called, with the documented arguments (a recording plugin)."""

import attrs

from hostkit import ModelTypeSpec, PassError, PassSpec, hookimpl, option
from hostkit.testing import register_plugin


@attrs.frozen
class RecTar:
    path: str = option(help="archive", path=True)


@attrs.frozen
class _Opts:
    fail: bool = option(False, help="raise PassError")


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def hostkit_register(self, register):
        register.model_type(ModelTypeSpec("RecTar", RecTar, "test handle"))
        register.pass_type(PassSpec(name="Rec", config_cls=_Opts, summary="records", run=self.run_rec))
        register.exporter(PassSpec(name="RecExport", config_cls=_Opts, summary="exports", output_type="RecTar",
                                   run=self.run_export))

    @hookimpl
    def hostkit_load_model(self, model, context):
        self.events.append(("load_model", type(model).__name__))
        return None  # the built-in loader answers

    @hookimpl(wrapper=True)
    def hostkit_run_pass(self, pass_type, config, model, context):
        self.events.append(("run_pass", pass_type))
        output = yield
        self.events.append(("ran_pass", pass_type, type(output).__name__))
        return output

    def run_rec(self, config, model, context):
        context.progress("working", 1, 1)
        context.report_metric("loss", 0.5, step=1)
        if config.fail:
            raise PassError("asked to fail")
        return model

    def run_export(self, config, model, context):
        (context.output_dir / "m.tar").write_text("x")
        return RecTar(path=str(context.output_dir / "m.tar"))

    @hookimpl
    def hostkit_run_started(self, context, steps):
        self.events.append(("run_started", [s.type for s in steps]))

    @hookimpl
    def hostkit_step_started(self, context):
        self.events.append(("step_started", context.pass_type))

    @hookimpl
    def hostkit_progress(self, context, message, current, total):
        self.events.append(("progress", message, current, total))

    @hookimpl
    def hostkit_metric(self, context, name, value, step):
        self.events.append(("metric", name, value, step))

    @hookimpl
    def hostkit_step_finished(self, context, record):
        self.events.append(("step_finished", record.type, record.status))

    @hookimpl
    def hostkit_step_failed(self, context, error):
        self.events.append(("step_failed", str(error)))

    @hookimpl
    def hostkit_run_finished(self, context, records, error):
        self.events.append(("run_finished", len(records), error is None))


RUN = '[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Rec"\nfail = {fail}\n[[passes]]\ntype = "RecExport"\n[output]\ndir = "out"\n'


def test_every_hook_is_called_in_order(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()
    recorder = Recorder()
    register_plugin(plugin_host, recorder, "recorder")
    result = run_toml(RUN.format(fail="false"), host=plugin_host)
    assert result.exit_code == 0, result.output
    assert recorder.events == [
        ("run_started", ["Rec", "RecExport"]),
        ("load_model", "HfModel"),
        ("step_started", "Rec"), ("run_pass", "Rec"), ("progress", "working", 1, 1), ("metric", "loss", 0.5, 1),
        ("ran_pass", "Rec", "HfModel"), ("step_finished", "Rec", "ok"),
        ("step_started", "RecExport"), ("run_pass", "RecExport"), ("ran_pass", "RecExport", "RecTar"),
        ("step_finished", "RecExport", "ok"),
        ("run_finished", 2, True),
    ]
    assert result.step(1)["output"]["type"] == "RecTar"


def test_a_failing_step_is_reported_to_observers(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()
    recorder = Recorder()
    register_plugin(plugin_host, recorder, "recorder")
    result = run_toml(RUN.format(fail="true"), host=plugin_host)
    assert result.exit_code == 1
    assert recorder.events[-2:] == [("step_failed", "asked to fail"), ("run_finished", 1, False)]


def test_a_failing_third_party_observer_is_a_warning_not_a_crash(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()
    register_plugin(plugin_host, Recorder(), "recorder")

    class BrokenDisplay:
        @hookimpl
        def hostkit_step_finished(self, context, record):
            raise ZeroDivisionError("the progress bar divided by zero")

    register_plugin(plugin_host, BrokenDisplay(), "broken-display")
    result = run_toml(RUN.format(fail="false"), host=plugin_host)
    assert result.exit_code == 0, result.output
    assert result.manifest["status"] == "ok"
    assert result.manifest["observer_errors"] == [
        "plugin 'broken-display': hostkit_step_finished failed: ZeroDivisionError: the progress bar divided by zero"]


def test_a_crashing_check_is_reported_as_the_plugins_bug(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()

    def check(config, context):
        raise KeyError("nope")

    class Crashy:
        @hookimpl
        def hostkit_register(self, register):
            register.pass_type(PassSpec(name="Crashy", config_cls=_Opts, summary="crashes in check", check=check,
                                        run=lambda config, model, context: model))

    register_plugin(plugin_host, Crashy(), "crashy", distribution="hostkit-crashy", version="9.9")
    result = run_toml('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Crashy"\n', host=plugin_host,
                      command="validate")
    assert result.exit_code == 2
    assert "passes[0] (Crashy): bug in the check of hostkit-crashy 9.9: KeyError: 'nope'" in result.output
