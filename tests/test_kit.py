"""hostkit.testing used on the installed test plugin: the conformance suite itself runs here."""

from __future__ import annotations

import json

from hostkit import handles
from hostkit.testing.conformance import PassConformance


class TestEchoConformance(PassConformance):
    plugin_name = "echo"
    pass_type = "Echo"
    valid_options = {"message": "x", "repeat": 2}
    invalid_options = [({"repeat": "2"}, "repeat"), ({"mode": "loud"}, "mode"), ({"colour": 1}, "colour")]
    check_adapter_loads = False  # Echo points adapter_path at its step folder, a stand-in, not a PEFT adapter
    run_file = """
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    [[passes]]
    type = "Echo"
    [output]
    dir = "out"
    """


def test_tiny_llama_fixture_is_a_loadable_model(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert model.config.num_hidden_layers == 2 and tokenizer.pad_token is None
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tokenizer)


def test_handles_round_trip_through_json():
    for handle in (
        handles.HfModel(path="/m", adapter_path="/a", quantization={"load_in_4bit": True}, load_kwargs={"x": [1]}),
        handles.OnnxModel(path="/m.onnx", adapter_weights="/w.npz", adapter_mode="inputs", adapter_names=["a"]),
        handles.PyTorchModel(user_script="/s.py", model_loader="load"),
    ):
        data = json.loads(json.dumps(handles.to_json(handle)))
        assert handles.from_json(data) == handle


def test_relocate_rewrites_only_paths_under_the_prefix():
    handle = handles.HfModel(path="/base", adapter_path="/out/.01-x.partial/adapter")
    moved = handles.relocate(handle, "/out/.01-x.partial", "/out/01-x")
    assert moved.adapter_path == "/out/01-x/adapter" and moved.path == "/base"
