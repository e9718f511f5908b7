"""LM head and loss at the scored positions only: the same loss and gradients as the full computation."""

from __future__ import annotations

import pytest
import torch

from hostkit_lora.scored import install_scored_loss, unsupported_reason


def _peft_model(path, **lora):
    import peft
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path)
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,  # B != 0: real gradients
                             task_type="CAUSAL_LM", **{"target_modules": ["q_proj", "v_proj", "o_proj"], **lora})
    return peft.get_peft_model(base, config)


def _batch(vocab: int):
    """A completion-only batch: prompts labelled -100, one row right-padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 14:] = 0
    labels = ids.clone()
    labels[0, :12] = -100
    labels[1, :5] = -100
    labels[2, :9] = -100
    labels[2, 14:] = -100
    return ids, mask, labels


def _loss_and_grads(model, ids, mask, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _assert_close(loss, grads, ref_loss, ref_grads, rel=1e-5):
    assert torch.isfinite(loss) and abs(loss.item() - ref_loss.item()) <= rel * abs(ref_loss.item())
    assert grads.keys() == ref_grads.keys() and grads
    for name, ref in ref_grads.items():
        scale = ref.abs().max().item()
        assert scale > 0, name
        assert (grads[name] - ref).abs().max().item() <= rel * scale, name


@pytest.mark.parametrize("num_items", [None, 7])
def test_loss_and_adapter_gradients_equal_the_full_logits(tiny_llama, num_items):
    model = _peft_model(tiny_llama)
    ids, mask, labels = _batch(model.config.vocab_size)
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    ref_loss, ref_grads = _loss_and_grads(model, ids, mask, labels, **kwargs)
    scored = install_scored_loss(model, chunk_rows=5)  # 28 scored positions: 6 chunks
    assert not isinstance(scored, str), scored
    loss, grads = _loss_and_grads(model, ids, mask, labels, **kwargs)
    _assert_close(loss, grads, ref_loss, ref_grads)
    scored.remove()
    again, _ = _loss_and_grads(model, ids, mask, labels, **kwargs)
    assert again.item() == ref_loss.item()  # removed: the model's own computation again
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_loss_equals_an_explicit_log_softmax_reference(tiny_llama):
    model = _peft_model(tiny_llama)
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    terms = [-logp[b, t - 1, labels[b, t]] for b in range(3) for t in range(1, 20) if labels[b, t] != -100]
    reference = torch.stack(terms).mean()
    scored = install_scored_loss(model, chunk_rows=4)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert len(terms) == 28 and abs(loss.item() - reference.item()) <= 1e-5 * reference.item()
    scored.remove()


@pytest.mark.parametrize("lora", [{"modules_to_save": ["lm_head"]},
                                  {"target_modules": ["q_proj", "v_proj", "lm_head"]}],
                         ids=["trained-head", "lora-on-head"])
def test_a_trainable_head_gets_the_same_gradients(tiny_llama, lora):
    model = _peft_model(tiny_llama, **lora)
    ids, mask, labels = _batch(model.config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, ids, mask, labels)
    assert any("lm_head" in name for name in ref_grads)
    scored = install_scored_loss(model, chunk_rows=6)
    loss, grads = _loss_and_grads(model, ids, mask, labels)
    _assert_close(loss, grads, ref_loss, ref_grads)
    scored.remove()


def test_no_tensor_holds_more_than_a_chunk_of_logits(tiny_llama):
    from torch.utils._python_dispatch import TorchDispatchMode

    model = _peft_model(tiny_llama)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    ids, mask, labels = _batch(vocab)
    sizes: list[int] = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if (isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == vocab
                        and tuple(t.shape) != (hidden, vocab)):  # not the head weight's transpose
                    sizes.append(t.numel() // vocab)  # rows of vocabulary-wide values
            return out

    with Shapes():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert max(sizes) == 3 * 20  # the full computation: batch x seq rows of logits
    sizes.clear()
    scored = install_scored_loss(model, chunk_rows=4)
    with Shapes():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert sizes and max(sizes) <= 4  # one chunk at a time
    scored.remove()


def test_bf16_autocast_matches_the_full_computation_under_autocast(tiny_llama):
    model = _peft_model(tiny_llama)
    ids, mask, labels = _batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref_grads = _loss_and_grads(model, ids, mask, labels)
        scored = install_scored_loss(model, chunk_rows=5)
        loss, grads = _loss_and_grads(model, ids, mask, labels)
    scored.remove()
    _assert_close(loss, grads, ref_loss, ref_grads, rel=2e-2)  # bf16 rounding of differently shaped matmuls


def test_models_that_change_their_logits_keep_the_full_computation(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    small = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8)
    assert unsupported_reason(LlamaForCausalLM(LlamaConfig(**small))) is None
    reason = unsupported_reason(Gemma2ForCausalLM(Gemma2Config(final_logit_softcapping=30.0, **small)))
    assert reason and "changes the logits" in reason
