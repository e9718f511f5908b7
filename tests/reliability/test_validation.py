"""Issue 12.2, 12.3, 12.6 and 12.10: bad values that `hostkit validate` must refuse, with their TOML path and exit 2.

Each case is refused by ``validate`` and by ``run`` before anything is written (no output folder).
"""

from __future__ import annotations

import pytest

from reliability.support import TRACEBACK, echo_run

LORA = '''
[model]
type = "HfModel"
path = "m"
{model}
[data.train]
type = "jsonl"
path = "train.jsonl"
[[passes]]
type = "LoRA"
train_data_config = "train"
{options}
[passes.training_args]
max_steps = 2
{training_args}
[output]
dir = "{output}"
'''


@pytest.fixture
def lora_workdir(workdir):
    (workdir / "train.jsonl").write_text('{"text": "one two three"}\n')
    return workdir


def _refused(run_toml, workdir, text: str, path: str) -> None:
    """validate and run: exit 2, an error naming ``path``, no traceback, nothing written."""
    for command in ("validate", "run"):
        result = run_toml(text, command=command, workdir=workdir)
        assert result.exit_code == 2, f"{command}: exit {result.exit_code}\n{result.output}"
        assert TRACEBACK not in result.output, result.output
        lines = [line.strip() for line in result.output.splitlines() if path in line]
        assert lines, f"{command}: no line names {path!r}:\n{result.output}"
    assert not (workdir / "out").exists() and not (workdir / "escaped").exists()


def _lora(model: str = "", options: str = "", training_args: str = "", output: str = "out") -> str:
    return LORA.format(model=model, options=options, training_args=training_args, output=output)


# -- 12.2: NaN and infinities ------------------------------------------------------------------

NON_FINITE = [
    pytest.param(echo_run(passes='[[passes]]\ntype = "Echo"\nscale = inf\n'), "passes[0] (Echo).scale", id="echo-inf"),
    pytest.param(echo_run(passes='[[passes]]\ntype = "Echo"\nscale = -inf\n'), "passes[0] (Echo).scale", id="echo-neg-inf"),
    pytest.param(echo_run(passes='[[passes]]\ntype = "Echo"\nscale = nan\n'), "passes[0] (Echo).scale", id="echo-nan"),
    pytest.param(echo_run(passes='[[passes]]\ntype = "Echo"\nsleep_s = inf\n'), "passes[0] (Echo).sleep_s", id="echo-sleep-inf"),
    pytest.param(_lora(options="alpha = inf"), "passes[0] (LoRA).alpha", id="lora-alpha-inf"),
    pytest.param(_lora(training_args="learning_rate = inf"), "passes[0] (LoRA).training_args.learning_rate",
                 id="training-args-lr-inf"),
    pytest.param(_lora(training_args="weight_decay = nan"), "passes[0] (LoRA).training_args.weight_decay",
                 id="training-args-nan"),
    pytest.param(_lora(training_args="max_grad_norm = -inf"), "passes[0] (LoRA).training_args.max_grad_norm",
                 id="training-args-neg-inf"),
]


@pytest.mark.parametrize("text, path", NON_FINITE)
def test_non_finite_numbers_are_refused_at_validate(run_toml, lora_workdir, text, path):
    _refused(run_toml, lora_workdir, text, path)


# -- 12.3: remote code only through trust_remote_code ------------------------------------------

def test_trust_remote_code_inside_load_kwargs_is_refused(run_toml, lora_workdir):
    _refused(run_toml, lora_workdir, _lora(model="load_kwargs = { trust_remote_code = true }"), "model.load_kwargs")
    result = run_toml(_lora(model="load_kwargs = { trust_remote_code = true }"), command="validate",
                      workdir=lora_workdir)
    line = [line for line in result.output.splitlines() if "model.load_kwargs" in line][0]
    assert "trust_remote_code" in line and "trust_remote_code = true in [model]" in line  # says where it belongs


# -- 12.6: output paths that collide -----------------------------------------------------------

@pytest.mark.parametrize("case", ["output-is-model", "output-inside-model", "output-is-a-file", "model-is-a-file",
                                  "output-dir-escapes", "long-step-name"])
def test_colliding_output_paths_are_refused_at_validate(run_toml, lora_workdir, case):
    (lora_workdir / "file.txt").write_text("not a folder")
    text, path = {
        "output-is-model": (echo_run(output="m"), "output.dir"),
        "output-inside-model": (echo_run(output="m/runs/x"), "output.dir"),
        "output-is-a-file": (echo_run(output="file.txt"), "output.dir"),
        "model-is-a-file": (echo_run(model="file.txt"), "model.path"),
        "output-dir-escapes": (_lora(training_args='output_dir = "../../../escaped"'),
                               "passes[0] (LoRA).training_args.output_dir"),
        "long-step-name": (echo_run(passes=f'[[passes]]\ntype = "Echo"\nname = "{"n" * 300}"\n'),
                           "passes[0] (Echo).name"),
    }[case]
    _refused(run_toml, lora_workdir, text, path)
    assert (lora_workdir / "m").is_dir() and sorted(p.name for p in (lora_workdir / "m").iterdir()) == ["config.json"]


# -- 12.10: values that only fail at run time ---------------------------------------------------

@pytest.mark.parametrize("options, training_args, path", [
    pytest.param("r = 1180591620717411303424", "", "passes[0] (LoRA).r", id="r-over-64-bits"),
    pytest.param("", "per_device_train_batch_size = 0", "passes[0] (LoRA).training_args.per_device_train_batch_size",
                 id="batch-size-0"),
])
def test_values_that_only_fail_at_run_time_are_refused_at_validate(run_toml, lora_workdir, options, training_args,
                                                                    path):
    _refused(run_toml, lora_workdir, _lora(options=options, training_args=training_args), path)
