"""The three training modes from TOML, both back-ends, reload in a fresh process, run-time errors.

A small CNN (and, for torchao, an MLP) on scikit-learn's 8x8 digits, saved as
.npz under tests/data. Accuracy and size are asserted loosely here; the exact
figures come from ``bench/bench_qat.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def _ok(result) -> dict:
    assert result.exit_code == 0, result.output
    step = result.step(-1)
    assert step["status"] == "ok"
    return step


def _val_images():
    import numpy as np
    import torch

    with np.load(HERE / "data" / "digits_val.npz") as archive:
        return torch.from_numpy(archive["images"]), archive["labels"]


def _predictions(handle: dict) -> list[int]:
    import torch

    from hostkit_qat.models import load_model

    images, _ = _val_images()
    with torch.no_grad():
        return load_model(handle)(images).argmax(-1).tolist()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qat):
    """Mode (c) with the eager back-end on the CNN and the torchao back-end on the MLP, run once."""
    from hostkit.testing.runs import run_toml

    here = HERE
    header, fuse = qat.header, qat.fuse
    eager = run_toml(header + textwrap.dedent(f"""
        [[passes]]
        type = "QuantizationAwareTraining"
        num_epochs = 3
        train_data_config = "train"
        val_data_config = "val"
        modules_to_fuse = {fuse}
        """), tmp_path_factory.mktemp("eager"))
    mlp_header = header.replace('model_loader = "model_loader"', 'model_loader = "mlp_loader"') + textwrap.dedent(f"""
        [data.loader]
        type = "user_script"
        user_script = "{here / 'scripts' / 'digits.py'}"
        dataloader_func = "dataloader_func"
        path = "{here / 'data' / 'digits_train.npz'}"
        """)
    torchao = run_toml(mlp_header + textwrap.dedent("""
        [[passes]]
        type = "QuantizationAwareTraining"
        backend = "torchao"
        scheme = "int8-dynamic-act-int4-weight"
        num_epochs = 3
        train_data_config = "loader"
        val_data_config = "val"
        """), tmp_path_factory.mktemp("torchao"))
    return {"eager": eager, "torchao": torchao}


def test_mode_c_eager_int8_close_to_float(runs):
    import torch

    from hostkit_qat.data import TensorData as DataConfig
    from hostkit.scripts import load_function
    from hostkit_qat.training import Batches, accuracy, default_loop

    step = _ok(runs["eager"])
    metrics = step["metrics"]
    assert step["output"]["model_format"] == "torchscript"
    assert Path(step["output"]["model_path"]).is_file()
    assert step["notes"]["fused"] == ["<model>: conv1+bn1+relu1", "<model>: conv2+bn2+relu2", "<model>: fc1+relu3"]
    assert step["notes"]["torchscript"] == "trace"
    assert any("torch.ao.quantization is deprecated" in m for m in step["notes"]["library_warnings"])
    assert "torch.ao.quantization is deprecated" not in runs["eager"].output  # captured, not printed
    assert metrics["final_train_loss"] < 1.0 and len(metrics["train_loss"]) > 5
    assert metrics["train_steps"] == 3 * 44

    # the float model trained the same way (same seed, loop, data order)
    data = HERE / "data"
    train = DataConfig(type="npz", path=str(data / "digits_train.npz"), input_field="images", label_field="labels")
    val = DataConfig(type="npz", path=str(data / "digits_val.npz"), input_field="images", label_field="labels",
                     batch_size=128)
    torch.manual_seed(42)
    model = load_function(HERE / "scripts" / "digits.py", "model_loader", "model_loader")(None)
    default_loop(model, Batches(train, "train", "t", shuffle_each_epoch=True, seed=42), num_epochs=3,
                 num_steps=None, learning_rate=1e-3)
    float_accuracy = accuracy(model, Batches(val, "val", "v", shuffle_each_epoch=False, seed=42))
    assert metrics["val_accuracy"] >= 0.9
    assert metrics["val_accuracy"] >= float_accuracy - 0.04, (metrics["val_accuracy"], float_accuracy)
    assert abs(metrics["val_accuracy"] - metrics["val_accuracy_fake_quant"]) <= 0.02
    # int8 weights: about a quarter of the float ones; the TorchScript file adds a fixed ~40 KB
    assert metrics["weights_ratio"] <= 0.3
    assert metrics["size_ratio"] <= 0.4


def test_torchao_mlp_with_user_script_data(runs):
    step = _ok(runs["torchao"])
    metrics = step["metrics"]
    assert step["output"]["model_format"] == "torchao"
    assert step["output"]["model_loader"] == "mlp_loader"
    assert step["notes"]["scheme"] == "int8-dynamic-act-int4-weight"
    assert step["notes"]["quantized_linears"] == 3
    assert metrics["val_accuracy"] >= 0.85
    assert abs(metrics["val_accuracy"] - metrics["val_accuracy_fake_quant"]) <= 0.02
    assert metrics["size_ratio"] <= 0.35


def test_outputs_reload_in_a_fresh_process_with_the_same_predictions(runs):
    handles = {name: _ok(result)["output"] for name, result in runs.items()}
    expected = {name: _predictions(handle) for name, handle in handles.items()}
    code = textwrap.dedent("""
        import json, sys
        import numpy as np, torch
        from hostkit_qat.models import load_model
        handles, images = json.loads(sys.argv[1]), torch.from_numpy(np.load(sys.argv[2])["images"])
        with torch.no_grad():
            print(json.dumps({name: load_model(h)(images).argmax(-1).tolist() for name, h in handles.items()}))
        """)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(handles), str(HERE / "data" / "digits_val.npz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh == expected
    _, labels = _val_images()
    for name, result in runs.items():
        accuracy = sum(int(p == y) for p, y in zip(fresh[name], labels)) / len(labels)
        assert accuracy == pytest.approx(result.step(-1)["metrics"]["val_accuracy"], abs=1e-6)


def test_mode_a_training_loop_func_with_qconfig_func(run_toml, qat):
    result = run_toml(qat.cnn_run(textwrap.dedent(f"""
        user_script = "{qat.digits}"
        training_loop_func = "training_loop_func"
        qconfig_func = "qconfig_func"
        quant_stubs = "model"
        modules_to_fuse = {qat.fuse}
        val_data_config = "val"
        """)))
    step = _ok(result)
    assert step["notes"]["mode"] == "training_loop_func"
    assert step["notes"]["qconfig"] == "qconfig_func() from user_script"
    assert step["notes"]["quant_stubs"] == "model"
    assert step["metrics"]["final_train_loss"] < 1.0  # the number training_loop_func returned
    assert step["metrics"]["val_accuracy"] >= 0.85


def test_mode_b_lightning(run_toml, qat):
    result = run_toml(qat.cnn_run(textwrap.dedent(f"""
        user_script = "{qat.digits_lightning}"
        ptl_module = "PTLModule"
        ptl_data_module = "PTLDataModule"
        num_epochs = 2
        do_validate = true
        modules_to_fuse = {qat.fuse}
        """)))
    step = _ok(result)
    metrics = step["metrics"]
    assert step["notes"]["mode"] == "ptl_module"
    assert metrics["train_steps"] == 2 * 44
    assert metrics["final_train_loss"] < 1.5
    assert metrics["lightning_accuracy"] >= 0.8  # trainer.validate on the data module (fake-quantized model)
    assert "GPU available" not in result.output  # Lightning's device summary went to the manifest notes
    assert not (Path(step["output"]["model_path"]).parent / "lightning").exists()
    assert Path(step["output"]["model_path"]).is_file()


def test_safetensors_weights_in_and_checkpoint_path(run_toml, qat, tmp_path):
    import torch
    from safetensors.torch import save_file

    from hostkit.scripts import load_function

    torch.manual_seed(0)
    model = load_function(qat.digits, "model_loader", "model_loader")(None)
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    header = qat.header.replace('model_loader = "model_loader"',
                                'model_loader = "model_loader"\nmodel_path = "weights.safetensors"\n'
                                'model_format = "safetensors"')
    step = _ok(run_toml(qat.cnn_run('train_data_config = "train"\nnum_steps = 3\ncheckpoint_path = "ckpt"',
                                    header=header)))
    assert step["metrics"]["train_steps"] == 3
    assert (tmp_path / "ckpt" / "last.pt").is_file()  # an explicit checkpoint_path is kept
    assert sorted(p.name for p in Path(step["output"]["model_path"]).parent.iterdir()) == ["model.pt", "quantization.json"]


def test_default_loop_resumes_from_its_checkpoint(tmp_path):
    import torch

    from hostkit_qat.data import TensorData as DataConfig
    from hostkit.scripts import load_function
    from hostkit_qat.training import Batches, _Checkpoints, default_loop

    data = DataConfig(type="npz", path=str(HERE / "data" / "digits_val.npz"), input_field="images",
                      label_field="labels", batch_size=64)
    batches = Batches(data, "val", "train_data_config", shuffle_each_epoch=True, seed=0)
    model = load_function(HERE / "scripts" / "digits.py", "mlp_loader", "model_loader")(None)
    checkpoints = _Checkpoints(tmp_path, key="same-step")
    first = default_loop(model, batches, num_epochs=1, num_steps=None, learning_rate=1e-3, checkpoints=checkpoints)
    assert first["resumed_from_epoch"] is None and (tmp_path / "last.pt").is_file()
    again = default_loop(model, batches, num_epochs=2, num_steps=None, learning_rate=1e-3, checkpoints=checkpoints)
    assert again["resumed_from_epoch"] == 0 and again["steps"] == 2 * first["steps"]
    other = default_loop(model, batches, num_epochs=1, num_steps=None, learning_rate=1e-3,
                         checkpoints=_Checkpoints(tmp_path, key="another-step"))
    assert other["resumed_from_epoch"] is None
    torch.load(tmp_path / "last.pt", weights_only=True)  # checkpoints are plain tensors and numbers


# -- run-time errors name the option ---------------------------------------------------------


def _fails(result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.output, result.output
    assert "Traceback" not in result.output and "bug in the plugin" not in result.output, result.output


def test_missing_training_loop_func(run_toml, qat):
    _fails(run_toml(qat.cnn_run(f'user_script = "{qat.digits}"\ntraining_loop_func = "train_it"')),
           "passes[0] (QuantizationAwareTraining) (plugin hostkit-qat", "training_loop_func: digits.py has no 'train_it'")


def test_missing_model_loader(run_toml, qat):
    header = qat.header.replace('model_loader = "model_loader"', 'model_loader = "build"')
    _fails(run_toml(qat.cnn_run('train_data_config = "train"\nnum_steps = 1', header=header)),
           "model.model_loader: digits.py has no 'build'")


def test_model_loader_must_return_a_module(run_toml, qat):
    header = qat.header.replace('model_loader = "model_loader"', 'model_loader = "not_a_module"')
    _fails(run_toml(qat.cnn_run('train_data_config = "train"\nnum_steps = 1', header=header)),
           "model.model_loader: not_a_module() returned str, expected a torch.nn.Module")


def test_pickled_module_is_refused(run_toml, qat, tmp_path):
    import torch

    from hostkit.scripts import load_function

    torch.save(load_function(qat.digits, "model_loader", "model_loader")(None), tmp_path / "whole.pt")
    header = qat.header.replace('model_loader = "model_loader"', 'model_loader = "model_loader"\nmodel_path = "whole.pt"')
    _fails(run_toml(qat.cnn_run('train_data_config = "train"\nnum_steps = 1', header=header)),
           "model.model_path:", "is not a plain state dict", "never unpickles whole modules")


def test_wrong_lightning_module_type(run_toml, qat):
    _fails(run_toml(qat.cnn_run(f'user_script = "{qat.digits_lightning}"\nptl_module = "NotLightning"\nnum_epochs = 1')),
           "ptl_module: NotLightning(model=...) returned NotLightning, expected a pytorch_lightning.LightningModule")


def test_data_with_no_batches(run_toml, qat):
    header = qat.header + f'\n[data.empty]\ntype = "user_script"\nuser_script = "{qat.digits}"\ndataloader_func = "empty_loader"\n'
    _fails(run_toml(qat.cnn_run('train_data_config = "empty"\nnum_epochs = 1', header=header)),
           "train_data_config: data.empty yielded no batches (dataloader_func 'empty_loader')")


def test_data_the_model_cannot_take(run_toml, qat):
    header = qat.header + f'\n[data.flat]\ntype = "user_script"\nuser_script = "{qat.digits}"\ndataloader_func = "flat_loader"\n'
    _fails(run_toml(qat.cnn_run('train_data_config = "flat"\nnum_epochs = 1', header=header)),
           "train_data_config: the model cannot take the batches of data.flat (inputs (32, 64) float32): RuntimeError")


def test_unknown_fusion_group(run_toml, qat):
    _fails(run_toml(qat.cnn_run('train_data_config = "train"\nnum_steps = 1\nmodules_to_fuse = [["conv9", "bn9"]]')),
           "modules_to_fuse[0]: no module has all of conv9, bn9")


@pytest.mark.parametrize("stubs", ["model", "modules"])
def test_ops_without_quantized_kernels(run_toml, qat, stubs):
    """A skip connection's add: quant_stubs = "model" fails with a hint, "modules" (the default) works."""
    header = qat.header.replace('model_loader = "model_loader"', 'model_loader = "residual_loader"')
    result = run_toml(qat.cnn_run(f'train_data_config = "train"\nnum_steps = 2\nquant_stubs = "{stubs}"', header=header))
    if stubs == "modules":
        _ok(result)
    else:
        _fails(result, "quant_stubs: the converted model runs an operation that has no quantized kernel",
               'quant_stubs = \"modules\" keeps every op but conv/linear in float')
