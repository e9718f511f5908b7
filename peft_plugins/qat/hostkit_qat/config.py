"""Options of ``type = "QuantizationAwareTraining"``.

The option names are Olive's (``OLIVE_REFERENCE.md`` section 2), so the seed's
three example configurations translate key for key; ``backend``, ``scheme``,
``group_size``, ``engine``, ``quant_stubs`` and ``learning_rate`` are ours.
Plain data only: nothing here imports torch.
"""

from __future__ import annotations

import attrs

from hostkit import one_of, option, positive

BACKENDS = ("eager", "torchao")

#: torchao schemes: name -> (summary, weight bits). The torchao configs are built
#: in :mod:`hostkit_qat.torchao_backend`; these are the ones whose QAT prepare
#: and convert run on CPU with torchao 0.18.
TORCHAO_SCHEMES = {
    "int8-dynamic-act-int4-weight": "int8 per-token dynamic activations, int4 weights in groups of group_size",
    "int8-dynamic-act-int8-weight": "int8 per-token dynamic activations, int8 per-channel weights",
    "int4-weight-only": "int4 weights in groups of group_size, float activations",
    "int8-weight-only": "int8 per-channel weights, float activations",
}

QUANTIZED_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


@attrs.frozen
class QuantizationAwareTrainingConfig:
    """Options of the QuantizationAwareTraining pass.

    Exactly one training mode: (a) ``training_loop_func``; (b) ``ptl_module``
    (+ ``ptl_data_module``) with ``num_epochs`` or ``num_steps``; (c)
    ``train_data_config`` with ``num_epochs`` or ``num_steps``.
    """

    # -- mode (a) and (b): code from a user script
    user_script: str | None = option(
        None, path=True,
        help="Python file defining the functions named below (default: the [model]'s user_script); "
             "it runs only because the run file names it")
    training_loop_func: str | None = option(
        None, help="mode (a): function in user_script that trains the prepared (fake-quantized) model it receives")
    ptl_module: str | None = option(
        None, help="mode (b): LightningModule class or factory in user_script, called as ptl_module(model=prepared_model)")
    ptl_data_module: str | None = option(
        None, help="mode (b): LightningDataModule class or factory in user_script, called with no arguments")
    # -- mode (c): the default loop
    train_data_config: str | None = option(
        None, help="mode (c): [data.NAME] of (inputs, labels) batches (type npz or user_script) for the default loop",
        data=True)
    learning_rate: float = option(1e-3, validator=positive, help="mode (c): Adam learning rate of the default loop")
    # -- length of training (modes b and c)
    num_epochs: int | None = option(None, validator=positive, help="modes (b), (c): passes over the training data")
    num_steps: int | None = option(None, validator=positive, help="modes (b), (c): stop after this many optimizer steps")
    # -- validation
    do_validate: bool | None = option(
        None, help="measure accuracy after training (default: when val_data_config is set)")
    val_data_config: str | None = option(
        None, help="[data.NAME] of (inputs, labels) batches: top-1 accuracy of the fake-quantized and the converted model",
        data=True)
    # -- quantization
    backend: str = option("eager", validator=one_of(*BACKENDS),
                          help="eager: torch.ao.quantization eager mode, static int8 TorchScript for CPU; "
                               "torchao: torchao QATConfig on nn.Linear layers")
    modules_to_fuse: list[list[str]] | None = option(
        None, help="eager: groups of submodule names fused before training, e.g. [[\"conv1\", \"bn1\", \"relu1\"]]; "
                   "applied in every module that has all the names")
    qconfig_func: str | None = option(
        None, help="eager: function in user_script returning a torch.ao.quantization.QConfig "
                   "(default: get_default_qat_qconfig(engine))")
    engine: str = option("x86", validator=one_of(*QUANTIZED_ENGINES),
                         help="eager: quantized engine the default qconfig targets and the model is converted for")
    quant_stubs: str = option(
        "auto", validator=one_of("auto", "modules", "model", "none"),
        help="eager: modules = QuantStub/DeQuantStub around each conv/linear (works for any model, Olive's way); "
             "model = one pair around the whole model (every op must take quantized tensors); "
             "none = the model has its own stubs; auto = none if the model has a QuantStub, else modules")
    scheme: str = option("int8-dynamic-act-int4-weight", validator=one_of(*TORCHAO_SCHEMES),
                         help="torchao: " + "; ".join(f"{k} = {v}" for k, v in TORCHAO_SCHEMES.items()))
    group_size: int = option(32, validator=positive, help="torchao: weights per scale for the int4 schemes")
    # -- run control
    seed: int = option(42, help="seed of torch, numpy and random, set before the model is built")
    checkpoint_path: str | None = option(
        None, path=True,
        help="folder for training checkpoints, kept after the run (default: inside the step folder, removed when it completes); "
             "mode (c) resumes from it, mode (b) is Lightning's default_root_dir")

    @property
    def mode(self) -> str | None:
        """``"training_loop_func"``, ``"ptl_module"``, ``"default"`` or ``None`` when no mode is chosen."""
        if self.training_loop_func:
            return "training_loop_func"
        if self.ptl_module:
            return "ptl_module"
        if self.train_data_config:
            return "default"
        return None

    @property
    def validate(self) -> bool:
        return self.do_validate if self.do_validate is not None else self.val_data_config is not None
