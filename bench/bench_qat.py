"""QuantizationAwareTraining: int8 / int4 accuracy and size against the float model trained the same way.

    python bench/bench_qat.py --output PART.md [--epochs 5]

Data: scikit-learn's 8x8 digits (peft_plugins/qat/tests/data: 1,400 train, 397
validation images). Eager back-end: the tests' DigitsCNN (conv-bn-relu x2,
two linears), QAT through `hostkit run` (mode c, fused conv+bn+relu), against
the same CNN trained in float by the same default loop (same seed, epochs,
Adam lr, batch order). torchao back-end: the tests' DigitsMLP. Sizes compare
files saved the same way (TorchScript for eager, torch.save state dicts for
torchao); latency is the mean of 50 forward passes on the 397 validation
images, one thread.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "peft_plugins" / "qat" / "tests"


def run_file(passes: str, loader: str) -> str:
    data = TESTS / "data"
    return f"""
[model]
type = "PyTorchModel"
user_script = "{TESTS / 'scripts' / 'digits.py'}"
model_loader = "{loader}"

[data.train]
type = "npz"
path = "{data / 'digits_train.npz'}"
input_field = "images"
label_field = "labels"

[data.val]
type = "npz"
path = "{data / 'digits_val.npz'}"
input_field = "images"
label_field = "labels"
batch_size = 512

[[passes]]
type = "QuantizationAwareTraining"
train_data_config = "train"
val_data_config = "val"
{passes}

[output]
dir = "out"
"""


def float_baseline(loader: str, epochs: int, seed: int) -> dict:
    import torch

    from hostkit_qat.data import TensorData as DataConfig
    from hostkit.scripts import load_function
    from hostkit_qat.training import Batches, accuracy, default_loop

    data = TESTS / "data"
    train = DataConfig(type="npz", path=str(data / "digits_train.npz"), input_field="images", label_field="labels")
    val = DataConfig(type="npz", path=str(data / "digits_val.npz"), input_field="images", label_field="labels",
                     batch_size=512)
    torch.manual_seed(seed)
    model = load_function(TESTS / "scripts" / "digits.py", loader, "model_loader")(None)
    start = time.perf_counter()
    result = default_loop(model, Batches(train, "train", "train", shuffle_each_epoch=True, seed=seed),
                          num_epochs=epochs, num_steps=None, learning_rate=1e-3)
    seconds = time.perf_counter() - start
    val_batches = Batches(val, "val", "val", shuffle_each_epoch=False, seed=seed)
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return {"accuracy": accuracy(model, val_batches), "loss": result["final_train_loss"], "seconds": seconds,
            "model": model, "state_dict_bytes": buffer.getbuffer().nbytes}


def latency_ms(model, inputs, repeats: int = 50) -> float:
    import torch

    with torch.no_grad():
        for _ in range(5):
            model(inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs)
    return (time.perf_counter() - start) / repeats * 1000


def size_scaling() -> list[str]:
    """File ratio of the eager output for wider versions of the test CNN (prepared, calibrated on random
    inputs and converted, not trained: sizes do not depend on training)."""
    import types

    import torch
    from torch import nn

    from hostkit_qat.eager import EagerBackend

    class WideCNN(nn.Module):
        def __init__(self, c1: int, c2: int, hidden: int) -> None:
            super().__init__()
            self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.conv2, self.bn2, self.relu2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU()
            self.flatten = nn.Flatten()
            self.fc1, self.relu3, self.fc2 = nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10)

        def forward(self, x):
            x = self.pool(self.relu1(self.bn1(self.conv1(x))))
            x = self.relu2(self.bn2(self.conv2(x)))
            return self.fc2(self.relu3(self.fc1(self.flatten(x))))

    config = types.SimpleNamespace(engine="x86", qconfig_func=None, quant_stubs="auto", modules_to_fuse=[
        ["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]])
    example = ((torch.rand(8, 1, 8, 8),), {})
    lines = ["| CNN widths (conv1, conv2, fc1) | parameters | float TorchScript bytes | int8 TorchScript bytes | ratio |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for widths in ((16, 32, 256), (32, 64, 512), (64, 128, 1024)):
            model = WideCNN(*widths)
            params = sum(p.numel() for p in model.parameters())
            backend = EagerBackend(config, None)
            prepared = backend.prepare(model)
            prepared(*example[0])
            backend.freeze(prepared)
            path, _ = backend.save(backend.convert(prepared), Path(tmp), example)
            float_bytes, int8_bytes = backend.float_size(example), path.stat().st_size
            lines.append(f"| {widths} | {params:,} | {float_bytes:,} | {int8_bytes:,} | {int8_bytes / float_bytes:.3f} |")
    return lines


def qat_run(passes: str, loader: str, workdir: Path) -> dict:
    from hostkit.testing.runs import run_toml

    start = time.perf_counter()
    result = run_toml(run_file(passes, loader), workdir)
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(result.output)
    step = result.step(-1)
    return {"metrics": step["metrics"], "seconds": seconds, "step_seconds": step["duration_s"],
            "handle": step["output"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[0, 1],
                        help="more seeds for the eager CNN row (float and QAT retrained for each)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from hostkit_qat.models import load_model

    torch.set_num_threads(1)
    val_images = torch.from_numpy(np.load(TESTS / "data" / "digits_val.npz")["images"])
    fuse = '[["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]]'
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(args.seed, "modules"), (args.seed, "model")] + [(s, "modules") for s in args.extra_seeds]
        for seed, stubs in cases:
            base = float_baseline("model_loader", args.epochs, seed)
            scripted_float = torch.jit.trace(base["model"], val_images[:8])
            buffer = io.BytesIO()
            torch.jit.save(scripted_float, buffer)
            float_ms = latency_ms(scripted_float, val_images)
            qat = qat_run(f"num_epochs = {args.epochs}\nseed = {seed}\nmodules_to_fuse = {fuse}\n"
                          f"quant_stubs = \"{stubs}\"", "model_loader", Path(tmp) / f"eager-{stubs}-{seed}")
            m = qat["metrics"]
            int8 = load_model(qat["handle"])
            rows.append((f"CNN, eager int8, quant_stubs={stubs}, seed {seed}", base["accuracy"], m["val_accuracy"],
                         m["val_accuracy_fake_quant"], buffer.getbuffer().nbytes, m["quantized_model_bytes"],
                         m["weights_ratio"], base["seconds"], qat["step_seconds"], float_ms,
                         latency_ms(int8, val_images)))
        mlp = float_baseline("mlp_loader", args.epochs, args.seed)
        mlp_ms = latency_ms(mlp["model"], val_images)
        for scheme in ("int8-dynamic-act-int4-weight", "int8-dynamic-act-int8-weight", "int4-weight-only"):
            qat = qat_run(f"num_epochs = {args.epochs}\nseed = {args.seed}\nbackend = \"torchao\"\nscheme = \"{scheme}\"",
                          "mlp_loader", Path(tmp) / f"torchao-{scheme}")
            m = qat["metrics"]
            low = load_model(qat["handle"])
            rows.append((f"MLP, torchao {scheme}, seed {args.seed}", mlp["accuracy"], m["val_accuracy"],
                         m["val_accuracy_fake_quant"], mlp["state_dict_bytes"], m["quantized_model_bytes"],
                         m["weights_ratio"], mlp["seconds"], qat["step_seconds"], mlp_ms, latency_ms(low, val_images)))

    lines = [
        "## QuantizationAwareTraining (hostkit-qat)",
        "",
        f"8x8 digits, {args.epochs} epochs, seed {args.seed}, Adam lr 1e-3, batch 32; float = the same model trained "
        "by the same default loop without fake quantization. Step time includes prepare, convert, save and validation.",
        "",
        "| model / back-end | float acc | quantized acc | fake-quant acc | float file bytes | quantized file bytes "
        "| file ratio | weights ratio | float train s | QAT step s | float ms | quantized ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, fa, qa, fq, fb, qb, wr, fs, qs, fms, qms in rows:
        lines.append(f"| {name} | {fa:.4f} | {qa:.4f} | {fq:.4f} | {fb:,} | {qb:,} | {qb / fb:.3f} | {wr:.3f} | "
                     f"{fs:.1f} | {qs:.1f} | {fms:.2f} | {qms:.2f} |")
    lines += ["", "File ratio: the output file against the float model saved the same way (TorchScript for eager, "
              "torch.save state dict for torchao). Weights ratio: torch.save of the two state dicts (no TorchScript "
              "code or debug tables). Latency: mean of 50 forward passes over the 397 validation images, one thread."]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices; the pass records them in its manifest
        lines += ["", "Eager output size against model size (TorchScript adds a fixed ~40 KB):", ""] + size_scaling()
    text = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
