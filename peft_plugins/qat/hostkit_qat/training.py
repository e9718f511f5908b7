"""The three ways the prepared (fake-quantized) model is trained, and validation.

(a) ``training_loop_func``: the user's function owns the loop;
(b) ``ptl_module``: a LightningModule trained by ``pytorch_lightning.Trainer``;
(c) the default loop: cross-entropy and Adam over ``(inputs, labels)`` batches of
    a data config (``npz`` arrays or a ``user_script`` ``dataloader_func``).

The same data and forward helpers serve validation: top-1 accuracy of the
fake-quantized and of the converted model on ``val_data_config``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from hostkit import PassError
from hostkit_qat.data import load_arrays, user_batches

LOG_EVERY = 10


# -- data ------------------------------------------------------------------


def _as_tensor(value: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_as_tensor(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tensor(v) for k, v in value.items()}
    return value


class Batches:
    """Re-iterable ``(inputs, labels)`` batches of one data config.

    ``npz``: arrays cut into ``batch_size`` batches, reshuffled every epoch when
    ``shuffle_each_epoch``; ``user_script``: ``dataloader_func(data_config)`` is
    called once per epoch, so a generator works as well as a DataLoader.
    """

    def __init__(self, data_config: Any, name: str, option: str, *, shuffle_each_epoch: bool, seed: int | None):
        self.config = data_config
        self.name = name
        self.option = option
        self.shuffle = shuffle_each_epoch
        self.seed = 0 if seed is None else seed
        self._arrays = load_arrays(data_config, name) if data_config.type == "npz" else None

    def __len__(self) -> int:
        if self._arrays is None:
            raise TypeError("length unknown for user_script data")
        return math.ceil(len(self._arrays[0]) / self.config.batch_size)

    def epoch(self, index: int = 0) -> Iterator[tuple[Any, Any]]:
        count = 0
        for batch in self._raw(index):
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise PassError(f"{self.option}: data.{self.name} must yield (inputs, labels) pairs, "
                                f"got {type(batch).__name__}")
            count += 1
            yield _as_tensor(batch[0]), _as_tensor(batch[1])
        if count == 0:
            source = (f"dataloader_func {self.config.dataloader_func!r}" if self._arrays is None
                      else str(self.config.path))
            raise PassError(f"{self.option}: data.{self.name} yielded no batches ({source})")

    def _raw(self, index: int) -> Iterable[Any]:
        if self._arrays is None:
            return user_batches(self.config, self.name)
        import numpy as np

        inputs, labels = self._arrays
        order = (np.random.default_rng(self.seed + index).permutation(len(inputs)) if self.shuffle
                 else np.arange(len(inputs)))
        size = self.config.batch_size
        return ((inputs[order[i:i + size]], labels[order[i:i + size]]) for i in range(0, len(inputs), size))


def logits_of(out: Any) -> Any:
    """The logits in a model's output: the tensor itself, ``.logits``, or the first item of a tuple."""
    if hasattr(out, "logits"):
        out = out.logits
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


def forward(model: Any, inputs: Any) -> Any:
    """Call ``model`` on one batch's inputs (tensor, tuple of tensors or dict) and return the logits."""
    if isinstance(inputs, dict):
        return logits_of(model(**inputs))
    if isinstance(inputs, (list, tuple)):
        return logits_of(model(*inputs))
    return logits_of(model(inputs))


def _shapes(value: Any) -> str:
    if hasattr(value, "shape"):
        return f"{tuple(value.shape)} {str(getattr(value, 'dtype', '')).replace('torch.', '')}".strip()
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_shapes(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shapes(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def checked_forward(model: Any, inputs: Any, labels: Any, batches: Batches, first: bool) -> Any:
    """:func:`forward`; on the first batch, a model that cannot take the data is an error naming the data option."""
    if not first:
        return forward(model, inputs)
    try:
        logits = forward(model, inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise PassError(f"{batches.option}: the model cannot take the batches of data.{batches.name} "
                        f"(inputs {_shapes(inputs)}): {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not hasattr(logits, "dim") or logits.dim() < 1 or logits.shape[0] != labels.view(-1).shape[0]:
        raise PassError(f"{batches.option}: expected class scores of shape (batch, classes) for data.{batches.name}, "
                        f"got {_shapes(logits)} for labels {_shapes(labels)}")
    return logits


def accuracy(model: Any, batches: Batches) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, no gradients) over one pass of ``batches``."""
    import torch

    was_training = model.training if hasattr(model, "training") else False
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in batches.epoch(0):
            logits = checked_forward(model, inputs, labels, batches, first=total == 0)
            correct += int((logits.argmax(-1) == labels.view(-1).long().to(logits.device)).sum())
            total += labels.numel()
    if was_training:
        model.train()
    return correct / total


# -- mode (c): the default loop ----------------------------------------------------


class _Checkpoints:
    """``last.pt`` (model, optimizer, epoch, losses) written atomically after every epoch.

    A checkpoint is resumed only when it was written by a step with the same
    cache key (same input, options and plugin version).
    """

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        self.path = folder / "last.pt"
        self.key = key

    def load(self) -> dict[str, Any] | None:
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable checkpoint just means starting over
            return None
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({**state, "key": self.key}, tmp)
        os.replace(tmp, self.path)


def default_loop(model: Any, batches: Batches, *, num_epochs: int | None, num_steps: int | None,
                 learning_rate: float, report: Callable[[str, Any, int | None], None] | None = None,
                 progress: Callable[[str, int | None, int | None], None] | None = None,
                 checkpoints: _Checkpoints | None = None) -> dict[str, Any]:
    """Cross-entropy + Adam over ``batches``; returns ``{"final_train_loss", "steps", "epochs", "resumed_from_epoch"}``.

    ``final_train_loss`` is the mean loss over the batches of the last epoch run.
    Used by mode (c), and by the tests and benchmark to train the float baseline
    exactly the same way.
    """
    import torch

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    start_epoch, step, last_losses, resumed = 0, 0, [], None
    if checkpoints is not None:
        state = checkpoints.load()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step, last_losses = state["epoch"] + 1, state["step"], list(state["losses"])
            resumed = state["epoch"]
    epochs = num_epochs if num_epochs is not None else math.inf
    start_step = step
    try:
        total = num_steps or (len(batches) * num_epochs if num_epochs else None)
    except TypeError:
        total = num_steps
    model.train()
    epoch = start_epoch
    while epoch < epochs and (num_steps is None or step < num_steps):
        losses = []
        for inputs, labels in batches.epoch(epoch):
            logits = checked_forward(model, inputs, labels, batches, first=step == start_step)
            loss = torch.nn.functional.cross_entropy(logits, labels.view(-1).long().to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if report is not None and (step % LOG_EVERY == 0 or step == 1):
                report("train_loss", round(losses[-1], 6), step)
            if progress is not None:
                progress("training", step, total)
            if num_steps is not None and step >= num_steps:
                break
        if not math.isfinite(sum(losses)):
            raise PassError(f"training diverged at epoch {epoch} (loss {losses[-1]}): lower learning_rate")
        last_losses = losses
        if checkpoints is not None:
            checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                              "epoch": epoch, "step": step, "losses": losses})
        epoch += 1
    final = sum(last_losses) / len(last_losses) if last_losses else None
    return {"final_train_loss": final, "steps": step, "epochs": epoch, "resumed_from_epoch": resumed}


# -- mode (a): the user's loop ------------------------------------------------------


def user_loop(model: Any, func: Callable[..., Any], name: str) -> tuple[Any, dict[str, Any]]:
    """Call ``training_loop_func(model)``: it returns the trained model, ``None`` (trained in place) or a final loss."""
    import torch

    result = func(model)
    if result is None:
        return model, {}
    if isinstance(result, torch.nn.Module):
        return result, {}
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return model, {"final_train_loss": float(result)}
    raise PassError(f"training_loop_func: {name}() returned {type(result).__name__}; return the trained model, "
                    "None (trained in place) or the final training loss")


# -- mode (b): PyTorch Lightning -------------------------------------------------------


def _lightning() -> Any:
    """``pytorch_lightning``, or ``lightning.pytorch`` (the unified package) when only that is installed."""
    try:
        import pytorch_lightning as pl
    except ImportError:
        try:
            import lightning.pytorch as pl
        except ImportError:
            from hostkit.errors import MissingRequirement
            from hostkit_qat.plugin import LIGHTNING_INSTALL

            raise MissingRequirement(f"ptl_module: needs PyTorch Lightning, which is not installed: {LIGHTNING_INSTALL}") from None
    return pl


def _lightning_for(obj: Any) -> Any:
    """The Lightning package ``obj``'s class comes from (pytorch_lightning and lightning.pytorch are distinct)."""
    for cls in type(obj).__mro__:
        if cls.__name__ in ("LightningModule", "LightningDataModule"):
            if cls.__module__.startswith("lightning.pytorch"):
                import lightning.pytorch as pl

                return pl
            if cls.__module__.startswith("pytorch_lightning"):
                import pytorch_lightning as pl

                return pl
    return None


def lightning_fit(model: Any, module_factory: Callable[..., Any], module_name: str,
                  data_factory: Callable[..., Any] | None, data_name: str | None, *,
                  num_epochs: int | None, num_steps: int | None, root_dir: Path, checkpointing: bool,
                  validate: bool, report: Callable[[str, Any, int | None], None]) -> tuple[Any, dict[str, Any]]:
    """Train ``model`` through ``ptl_module(model=model)`` with a Lightning Trainer.

    Returns the trained model and ``{"final_train_loss", "steps", **validation metrics}``.
    """
    pl = _lightning()
    lightning_module = module_factory(model=model)
    pl = _lightning_for(lightning_module) or pl
    if not isinstance(lightning_module, pl.LightningModule):
        raise PassError(f"ptl_module: {module_name}(model=...) returned {type(lightning_module).__name__}, "
                        f"expected a {pl.__name__}.LightningModule")
    datamodule = None
    if data_factory is not None:
        datamodule = data_factory()
        if not isinstance(datamodule, pl.LightningDataModule):
            raise PassError(f"ptl_data_module: {data_name}() returned {type(datamodule).__name__}, "
                            f"expected a {pl.__name__}.LightningDataModule")

    losses: list[float] = []

    class _LossRecorder(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if loss is not None and hasattr(loss, "detach"):
                losses.append(float(loss.detach()))
                step = len(losses)
                if step % LOG_EVERY == 0 or step == 1:
                    report("train_loss", round(losses[-1], 6), step)

    trainer = pl.Trainer(
        max_epochs=num_epochs if num_epochs is not None else -1,
        max_steps=num_steps if num_steps is not None else -1,
        accelerator="auto", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=checkpointing, default_root_dir=str(root_dir), callbacks=[_LossRecorder()],
        num_sanity_val_steps=0,
    )
    fit_kwargs = {"datamodule": datamodule} if datamodule is not None else {}
    trainer.fit(lightning_module, **fit_kwargs)
    results: dict[str, Any] = {"steps": trainer.global_step}
    if losses:
        per_epoch = max(1, len(losses) // max(1, trainer.current_epoch or 1))
        tail = losses[-per_epoch:]
        results["final_train_loss"] = sum(tail) / len(tail)
    if validate:
        for name, value in (trainer.validate(lightning_module, verbose=False, **fit_kwargs) or [{}])[0].items():
            results[f"lightning_{name}"] = float(value)
    import torch

    trained = getattr(lightning_module, "model", None)  # Olive took ptl_module.model; usually our model itself
    return (trained if isinstance(trained, torch.nn.Module) else model), results
