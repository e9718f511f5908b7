"""Issue 12.9: a check that cannot be made is reported, never passed silently."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reliability.support import TOY_BASE, assert_user_error, cli, peft_config, write_peft_folder


@pytest.mark.parametrize("config, missing", [
    ({}, "lora_alpha"),
    ({k: v for k, v in peft_config(r=8).items() if k != "lora_alpha"}, "lora_alpha"),
    ({k: v for k, v in peft_config(r=8).items() if k != "r"}, "r"),
], ids=["empty", "no-alpha", "no-r"])
def test_convert_adapters_refuses_a_config_without_r_or_alpha(tmp_path, config, missing):
    # rank-8 weights: peft's default r = 8 fits them, so only the defaults hide what is missing
    adapter = write_peft_folder(tmp_path / "adapter", config, r=8)
    code, output = cli(["convert-adapters", "--adapter-path", str(adapter), "--output-path", str(tmp_path / "w"),
                        "--adapter-format", "numpy"], tmp_path)
    assert_user_error(code, output, 2, str(adapter / "adapter_config.json"), missing)
    assert not list(tmp_path.glob("w*"))


def test_infer_reports_a_base_model_it_cannot_compare(tmp_path, extracted_toy):
    model, weights = extracted_toy
    with np.load(weights, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "__metadata__"}
        metadata = json.loads(str(data["__metadata__"]))
    assert metadata["hostkit.base_model"] == TOY_BASE
    metadata["hostkit.base_model"] = "some-org/other-base"  # a hub id: no digest to compare
    other = tmp_path / "other.npz"
    with open(other, "wb") as fh:
        np.savez(fh, **arrays, __metadata__=np.array(json.dumps(metadata)))
    args = ["infer", str(model), "--adapter", f"other={other}", "--prompt", "hi"]
    code, output = cli([*args, "--strict"], tmp_path)
    assert_user_error(code, output, 2, "some-org/other-base", TOY_BASE)
    code, output = cli(args, tmp_path)  # without --strict: a warning, before anything runs
    warning = [line for line in output.splitlines() if "warning" in line.lower() and "some-org/other-base" in line]
    assert warning and TOY_BASE in warning[0], output
