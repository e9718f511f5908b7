"""The LM head and the loss only at the scored positions, in chunks.

A causal LM's training forward projects every position onto the vocabulary
(``batch x seq x vocab`` logits) and then ignores every position whose label
is -100: the prompt of completion-only data, padding. On SmolLM2-135M the
vocabulary projection is ~21% of the parameters, and with the quickstart's data
four positions in five carry no loss.

:func:`install_scored_loss` changes a transformers causal LM (under its peft
wrapper) through transformers' own loss hook, ``model.loss_function``:

* the output embedding (``lm_head``) returns its input unchanged during the
  forward, so the model hands the final hidden states to the loss function
  instead of logits;
* the loss function picks the positions whose (shifted) label is not -100 and
  computes the head and the cross-entropy there only, ``chunk_rows`` positions
  at a time, so at most ``chunk_rows x vocab`` logits exist at once.

For a plain ``nn.Linear`` head whose weights are frozen (LoRA, QLoRA, LoftQ
adapt the layers below it), one autograd function computes each chunk's loss
and its gradient with respect to the hidden states in the same pass (the
softmax minus the one-hot target, times the head weight): no logits are kept
for the backward and the head runs once forward and once for the gradient, as
in the full computation. A head with trainable weights (LoRA on ``lm_head``,
``modules_to_save``) runs each chunk under activation checkpointing instead.

The loss is the model's own (``ForCausalLMLoss``): the sum over scored
positions divided by the Trainer's ``num_items_in_batch``, else their mean;
logits are upcast to float32 before the softmax. Only models whose forward
passes ``self.<head>(hidden_states)`` to ``self.loss_function`` unchanged are
converted (checked on the forward's source: logit soft-capping or scaling,
as in Gemma 2 or Granite, keeps the full computation).
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
#: Memory for one chunk's float32 logits: 64 MiB is 341 rows of SmolLM2's 49152-token vocabulary.
CHUNK_BYTES = 64 << 20


def default_chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_BYTES // (4 * max(1, vocab_size)))


def unsupported_reason(model: Any) -> str | None:
    """Why the scored-positions loss cannot replace ``model``'s (a transformers causal LM), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return "the model has no output embedding"
    name = next((n for n, m in model.named_children() if m is head), None)
    if name is None:
        return "the output embedding is not a direct child of the model"
    if not hasattr(type(model), "loss_function"):
        return "the model has no loss_function hook (transformers too old)"
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return "the model's forward has no source to check"
    found = re.search(rf"\n\s*logits = self\.{re.escape(name)}\(hidden_states[^\n]*\)\n", source)
    if not found:
        return f"its forward does not compute logits = self.{name}(hidden_states)"
    rest = source[found.end():]
    call = rest.find("self.loss_function(")
    if call < 0 or not re.match(r"self\.loss_function\(\s*(logits=)?logits\b", rest[call:]):
        return "its forward does not pass the logits to self.loss_function"
    if re.search(r"\blogits\b", rest[:call]):
        return "its forward changes the logits before the loss (soft-capping or scaling)"
    return None


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of ``hidden @ weight.T + bias`` against ``target``, chunk by chunk.

    The gradient with respect to ``hidden`` is computed in the forward (the
    weights are frozen), so no logits survive a chunk.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = target[start:start + chunk_rows]
            logits = F.linear(h, weight, bias)
            low = logits.dtype
            logits = logits.float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if need_grad:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                probs[torch.arange(y.shape[0], device=y.device), y] -= 1.0
                grad[start:start + chunk_rows] = torch.matmul(probs.to(low), weight.to(low)).to(hidden.dtype)
        ctx.save_for_backward(grad if need_grad else torch.empty(0))
        ctx.need_grad = need_grad
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype) if ctx.need_grad else None), None, None, None, None


def _checkpointed_cross_entropy(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                                target: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    """The same sum for any head module (trainable weights too): each chunk is recomputed in the backward."""
    from torch.utils.checkpoint import checkpoint

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        h, y = hidden[start:start + chunk_rows], target[start:start + chunk_rows]
        if torch.is_grad_enabled():
            total = total + checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            total = total + chunk_loss(h, y)
    return total


def scored_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, *, head: torch.nn.Module,
                         head_forward: Callable[[torch.Tensor], torch.Tensor], chunk_rows: int,
                         num_items_in_batch: Any = None, ignore_index: int = IGNORE_INDEX,
                         shift_labels: torch.Tensor | None = None) -> torch.Tensor:
    """``ForCausalLMLoss(head(hidden), labels)`` computed at the scored positions only."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.reshape(-1).to(hidden.device)
    keep = (shift_labels != ignore_index).nonzero().squeeze(1)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    target = shift_labels.index_select(0, keep)
    weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
    plain = (type(head) is torch.nn.Linear and not weight.requires_grad
             and (bias is None or not bias.requires_grad))
    if plain:
        total = _FusedLinearCrossEntropy.apply(flat, weight, bias, target, chunk_rows)
    else:
        total = _checkpointed_cross_entropy(head_forward, flat, target, chunk_rows)
    if num_items_in_batch is None:
        return total / keep.numel()  # nan when nothing is scored, as the mean cross-entropy is
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class ScoredLoss:
    """Installed on a causal LM by :func:`install_scored_loss`; :meth:`remove` restores the model."""

    def __init__(self, model: Any, chunk_rows: int | None = None):
        self.model = model
        self.head = model.get_output_embeddings()
        self.head_forward = self.head.forward  # the real projection (a bound method, LoRA wrappers included)
        vocab = getattr(self.head, "out_features", None) or model.config.vocab_size
        self.chunk_rows = chunk_rows or default_chunk_rows(vocab)
        self._had_loss_function = "_loss_function" in vars(model)
        self._previous = vars(model).get("_loss_function")
        self.head.forward = _identity
        model.loss_function = self

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None = None,
                 num_items_in_batch: Any = None, ignore_index: int = IGNORE_INDEX,
                 shift_labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        # `logits` are the final hidden states: the head returned its input
        return scored_cross_entropy(logits, labels, head=self.head, head_forward=self.head_forward,
                                    chunk_rows=self.chunk_rows, num_items_in_batch=num_items_in_batch,
                                    ignore_index=ignore_index, shift_labels=shift_labels)

    def remove(self) -> None:
        if vars(self.head).get("forward") is _identity:
            del self.head.forward
        if self._had_loss_function:
            self.model.loss_function = self._previous
        else:
            vars(self.model).pop("_loss_function", None)


def _identity(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


def install_scored_loss(model: Any, chunk_rows: int | None = None) -> ScoredLoss | str:
    """Compute ``model``'s head and loss at scored positions only (``model``: a transformers causal LM, or the
    peft model around one). Returns the installed :class:`ScoredLoss`, or why the model keeps its own loss.

    While installed, the model's ``logits`` output holds the final hidden states: use it for training and
    loss-only evaluation, and :meth:`ScoredLoss.remove` it before anything reads logits.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    reason = unsupported_reason(base)
    if reason:
        return reason
    return ScoredLoss(base, chunk_rows)


__all__ = ["ScoredLoss", "default_chunk_rows", "install_scored_loss", "scored_cross_entropy", "unsupported_reason"]
