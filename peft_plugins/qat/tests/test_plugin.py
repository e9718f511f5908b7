"""hostkit-qat's promises to the host, and validation (`hostkit validate`, nothing trains here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostkit.testing.conformance import PassConformance

TESTS = Path(__file__).resolve().parent


class TestQATConformance(PassConformance):
    plugin_name = "qat"
    pass_type = "QuantizationAwareTraining"
    valid_options = {"num_epochs": 1, "train_data_config": "train"}
    invalid_options = [
        ({"backend": "tensorrt"}, "backend"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"modules_to_fuse": ["conv1", "bn1"]}, "modules_to_fuse"),
        ({"scheme": "int3"}, "scheme"),
        ({"num_epoch": 2}, "num_epoch"),
    ]
    heavy_modules = PassConformance.heavy_modules + ("pytorch_lightning", "lightning", "torchao", "numpy")
    # a PyTorchModel run: the tiny_llama placeholder is not used
    run_file = f"""
    [model]
    type = "PyTorchModel"
    user_script = "{TESTS / 'scripts' / 'digits.py'}"
    model_loader = "model_loader"

    [data.train]
    type = "npz"
    path = "{TESTS / 'data' / 'digits_train.npz'}"
    input_field = "images"
    label_field = "labels"

    [[passes]]
    type = "QuantizationAwareTraining"
    train_data_config = "train"
    num_steps = 5

    [output]
    dir = "out"
    """

    def test_runs_on_tiny_model(self, tmp_path: Path) -> None:  # type: ignore[override]
        # same promise, without building the tiny Llama this run file does not use
        super().test_runs_on_tiny_model(tiny_llama=Path("unused"), tmp_path=tmp_path)


def _validate(run_toml, qat, passes: str, header: str | None = None):
    return run_toml(qat.cnn_run(passes, **({"header": header} if header else {})), command="validate")


def test_seed_examples_validate(run_toml, qat):
    """The seed's three example configurations, key for key."""
    for passes in (
        f'user_script = "{qat.digits}"\ntraining_loop_func = "training_loop_func"',
        f'user_script = "{qat.digits_lightning}"\nnum_epochs = 5\nptl_data_module = "PTLDataModule"\nptl_module = "PTLModule"',
        'num_epochs = 5\ntrain_data_config = "train"',
    ):
        result = _validate(run_toml, qat, passes)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("passes, expected", [
    ("", "passes[0] (QuantizationAwareTraining): choose a training mode"),
    ('training_loop_func = "training_loop_func"\ntrain_data_config = "train"',
     ".train_data_config: cannot be combined with training_loop_func"),
    ('train_data_config = "train"', ".num_epochs: required with train_data_config"),
    ('ptl_module = "PTLModule"', ".num_epochs: required with ptl_module"),
    ('ptl_data_module = "PTLDataModule"\ntrain_data_config = "train"\nnum_epochs = 1', ".ptl_data_module: needs ptl_module"),
    ('training_loop_func = "training_loop_func"\nnum_epochs = 3', ".num_epochs: not used by training_loop_func"),
    ('train_data_config = "train"\nnum_epochs = 1\ndo_validate = true', ".do_validate: needs val_data_config"),
    ('train_data_config = "train"\nnum_epochs = 1\ndo_validate = false\nval_data_config = "val"',
     ".val_data_config: set, but do_validate = false"),
    ('train_data_config = "trian"\nnum_epochs = 1', ".train_data_config: no [data.trian] table"),
    ('train_data_config = "train"\nnum_epochs = 1\nuser_script = "missing.py"', ".user_script: "),
    ('train_data_config = "train"\nnum_epochs = 1\nbackend = "torchao"\nmodules_to_fuse = [["a", "b"]]',
     '.modules_to_fuse: only used by backend = "eager"'),
    ('train_data_config = "train"\nnum_epochs = 1\nscheme = "int8-weight-only"', '.scheme: only used by backend = "torchao"'),
    ('train_data_config = "train"\nnum_epochs = 1\nmodules_to_fuse = [["conv1"]]', ".modules_to_fuse[0]: a group needs at least two"),
])
def test_validation_errors_name_the_option(run_toml, qat, passes, expected):
    result = _validate(run_toml, qat, passes)
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output


def test_function_options_need_a_user_script(run_toml, qat):
    header = qat.header.replace(f'user_script = "{qat.digits}"\n', "").replace('model_loader = "model_loader"\n', "")
    result = _validate(run_toml, qat, 'training_loop_func = "training_loop_func"', header=header)
    assert result.exit_code == 2
    assert ".user_script: training_loop_func needs a user_script (set it here or in [model])" in result.output


def test_text_data_is_refused(run_toml, qat, tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "hello"}\n')
    header = qat.header + f'\n[data.text]\ntype = "jsonl"\npath = "{tmp_path / "rows.jsonl"}"\ntext_field = "text"\n'
    result = _validate(run_toml, qat, 'train_data_config = "text"\nnum_epochs = 1', header=header)
    assert result.exit_code == 2
    assert "train_data_config: data.text has type 'jsonl'" in result.output


def test_lightning_missing_fails_at_validation_with_install_command(run_toml, qat, monkeypatch):
    import hostkit_qat.plugin as plugin

    real = plugin.module_available
    monkeypatch.setattr(plugin, "module_available",
                        lambda name: False if name in ("pytorch_lightning", "lightning") else real(name))
    result = _validate(run_toml, qat, f'user_script = "{qat.digits_lightning}"\nptl_module = "PTLModule"\nnum_epochs = 1')
    assert result.exit_code == 2
    assert ("passes[0] (QuantizationAwareTraining).ptl_module: needs PyTorch Lightning, which is not installed: "
            "pip install 'hostkit-qat[lightning]'") in result.output


def test_torchao_missing_fails_at_validation(run_toml, qat, monkeypatch):
    import hostkit_qat.plugin as plugin

    real = plugin.module_available
    monkeypatch.setattr(plugin, "module_available", lambda name: False if name == "torchao" else real(name))
    result = _validate(run_toml, qat, 'train_data_config = "train"\nnum_epochs = 1\nbackend = "torchao"')
    assert result.exit_code == 2
    assert "pip install 'hostkit-qat[torchao]'" in result.output


def test_validation_imports_no_heavy_library(qat, tmp_path):
    """`hostkit validate` of a Lightning + torchao run imports neither (nor torch)."""
    import subprocess
    import sys

    run = tmp_path / "run.toml"
    run.write_text(qat.cnn_run(f'user_script = "{qat.digits_lightning}"\nptl_module = "PTLModule"\nnum_epochs = 1\n'
                               'backend = "torchao"'))
    code = ("import sys; from hostkit.cli import main; code = main(['validate', sys.argv[1]]); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'torchao') if m in sys.modules)); "
            "sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


@pytest.mark.parametrize("example", sorted((TESTS.parent / "examples").glob("*.toml")), ids=lambda p: p.stem)
def test_readme_examples_validate(run_toml, example, tmp_path):
    result = run_toml(example.read_text(), command="validate", workdir=example.parent)
    assert result.exit_code == 0, result.output
