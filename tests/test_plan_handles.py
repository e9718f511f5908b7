"""Checks that see the plan: ``PassSpec(input_requires=...)`` against what the steps before it declare
(``output_sets`` / ``output_clears``), caught by ``hostkit validate`` (exit 2) before anything trains."""

from __future__ import annotations

import sys

import attrs
import pytest

import hostkit_lora.plugin
import hostkit_merge_adapters.plugin
from hostkit import PassSpec, hookimpl, option
from hostkit.testing import register_plugin


@attrs.frozen
class NeedsAdapterConfig:
    factor: float = option(0.5, help="a factor")


@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="NeedsAdapter", config_cls=NeedsAdapterConfig, summary="takes an adapter",
                                run="no_such_module:run", input_requires=("adapter_path",),
                                output_sets=("adapter_path",)))
    register.pass_type(PassSpec(name="MakesAdapter", config_cls=NeedsAdapterConfig, summary="writes an adapter",
                                run="no_such_module:run", output_sets=("adapter_path",)))


@pytest.fixture
def host(plugin_host):
    register_plugin(plugin_host, hostkit_lora.plugin, "lora")
    register_plugin(plugin_host, hostkit_merge_adapters.plugin, "merge_adapters")
    register_plugin(plugin_host, sys.modules[__name__], "needs_adapter")
    return plugin_host


def _run_file(model, data, passes: str, adapter: str | None = None) -> str:
    adapter_line = f'adapter_path = "{adapter}"' if adapter else ""
    return f'''
[model]
type = "HfModel"
path = "{model}"
{adapter_line}

[data.train]
type = "jsonl"
path = "{data}"
text_field = "text"

{passes}

[output]
dir = "out"
'''


LORA = '[[passes]]\ntype = "LoRA"\ntrain_data_config = "train"\n'
MERGE = '[[passes]]\ntype = "MergeAdapterWeights"\n'
NEEDS = '[[passes]]\ntype = "NeedsAdapter"\n'


def test_lora_merge_then_an_adapter_pass_is_refused_at_validate(host, run_toml, tiny_llama, tiny_jsonl, tmp_path):
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, LORA + MERGE + NEEDS), host=host, command="validate")
    assert result.exit_code == 2, result.output
    assert (f"ERROR: {tmp_path / 'run.toml'}: passes[2] (NeedsAdapter): needs an input with adapter_path set, "
            "but passes[1] (MergeAdapterWeights) gives one without it") in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_model_without_adapter_is_refused_and_one_with_an_adapter_passes(host, run_toml, tiny_llama, tiny_jsonl,
                                                                          tiny_lora):
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, NEEDS), host=host, command="validate")
    assert result.exit_code == 2
    assert "passes[0] (NeedsAdapter): needs an input with adapter_path set, but [model] has no adapter_path" in (
        result.output)
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, NEEDS, adapter=tiny_lora), host=host, command="validate")
    assert result.exit_code == 0, result.output


def test_facts_follow_named_inputs_and_undeclared_passes_are_not_blamed(host, run_toml, tiny_llama, tiny_jsonl,
                                                                       tiny_lora):
    # LoRA declares nothing: its output's adapter_path is unknown, so a pass after it is not refused
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, LORA + NEEDS), host=host, command="validate")
    assert result.exit_code == 0, result.output
    # the input of a step named by `input` is that step's output: [model] has an adapter, the merge does not
    named = (MERGE + 'name = "merged"\n' + NEEDS + 'input = "model"\n' + NEEDS + 'input = "merged"\n')
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, named, adapter=tiny_lora), host=host, command="validate")
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines() if "needs an input" in line]
    assert lines == [line.strip() for line in result.output.splitlines() if "passes[2] (NeedsAdapter)" in line]
    assert len(lines) == 1 and "passes[0] (MergeAdapterWeights) gives one without it" in lines[0], result.output
    # a pass that declares output_sets satisfies the next one, after a merge cleared the field
    makes = '[[passes]]\ntype = "MakesAdapter"\n'
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, MERGE + makes + NEEDS + NEEDS, adapter=tiny_lora), host=host,
                      command="validate")
    assert result.exit_code == 0, result.output


SEEN_BY_CHECK = []


def _check(config, check_context):
    SEEN_BY_CHECK.append((check_context.input_type, check_context.input_fields))
    if check_context.input_fields is not None and check_context.input_fields.get("adapter_path"):
        return ["factor: the input already has an adapter"]
    return []


@hookimpl(specname="hostkit_register")
def _register_checked(register):
    register.pass_type(PassSpec(name="Checked", config_cls=NeedsAdapterConfig, summary="checks its planned input",
                                run="no_such_module:run", check=_check))


def test_check_sees_the_planned_input(host, run_toml, tiny_llama, tiny_jsonl, tiny_lora):
    SEEN_BY_CHECK.clear()
    checked = '[[passes]]\ntype = "Checked"\n'
    # [model] has an adapter; after the merge the input has none; after LoRA (no declarations) nothing is known
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, checked + MERGE + checked + LORA + checked, adapter=tiny_lora),
                      host=host, command="validate")
    assert result.exit_code == 2
    assert [(t, f and f["adapter_path"]) for t, f in SEEN_BY_CHECK] == [("HfModel", True), ("HfModel", False),
                                                                       ("HfModel", None)]
    assert SEEN_BY_CHECK[0][1]["path"] is True and SEEN_BY_CHECK[0][1]["quantization"] is False
    problems = [line for line in result.output.splitlines() if "(Checked)" in line]
    assert len(problems) == 1 and "passes[0] (Checked).factor: the input already has an adapter" in problems[0]


def test_lora_after_a_merge_is_not_blamed_for_the_model_tables_adapter(host, run_toml, tiny_llama, tiny_jsonl,
                                                                        tiny_lora):
    # LoRA's check reads the planned input: [model] has an adapter, the merged model given to LoRA has none
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, MERGE + LORA, adapter=tiny_lora), host=host, command="validate")
    assert result.exit_code == 0, result.output
    result = run_toml(_run_file(tiny_llama, tiny_jsonl, LORA, adapter=tiny_lora), host=host, command="validate")
    assert result.exit_code == 2
    assert "passes[0] (LoRA).model.adapter_path: the input model already has an adapter" in result.output
