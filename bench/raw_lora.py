"""A hand-written peft + transformers.Trainer LoRA fine-tuning (no hostkit): the benchmarks' reference.

    python bench/raw_lora.py MODEL_DIR DATA.jsonl OUT_DIR [--steps 40] [--batch 4] [--max-len 64]
        [--template "Question: {question}\\nAnswer: {answer}"] [--response "Answer:"] [--append-eos]
        [--r 8] [--alpha 16] [--targets q_proj,k_proj,v_proj,o_proj] [--lr 2e-4] [--seed 42] [--bf16]

What a user would write from the peft and transformers docs, with the library
defaults: full logits and the model's own loss, fp32 (``--bf16``: the
Trainer's bf16 autocast). The data handling matches hostkit's data options
(``text_template``, ``response_template`` = only the tokens after it are
scored, ``append_eos``), so both train on the same tokens and labels; seeded
(``--seed``) like hostkit (``transformers.set_seed`` before the LoRA init, the
Trainer's seed), so their losses are comparable.

Prints one JSON line: ``train_s`` (``trainer.train`` runtime), ``loss`` (the
last logged training loss), ``mean_loss`` (mean over the run), ``tokens``
(non-padding tokens fed to training, the Trainer's own count) and ``tokens_per_s``.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--template", default="{text}")
    parser.add_argument("--response", default=None)
    parser.add_argument("--append-eos", action="store_true")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--logging-steps", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import peft
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    train = []
    for row in rows:
        text = args.template.format(**row)
        enc = tok(text, truncation=True, max_length=args.max_len, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        if args.response:  # score only the tokens that start after the response template
            boundary = text.find(args.response) + len(args.response)
            labels = [t if end > 0 and start >= boundary else -100 for t, (start, end) in zip(ids, enc["offset_mapping"])]
        else:
            labels = list(ids)
        if args.append_eos and ids[-1] != tok.eos_token_id:
            ids, labels = ids + [tok.eos_token_id], labels + [tok.eos_token_id]
        train.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})

    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    transformers.set_seed(args.seed)  # the LoRA A init draws from the global RNG
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, bias="none",
        target_modules=args.targets.split(","), task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=args.out_dir, max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", report_to="none", disable_tqdm=True,
        logging_steps=args.logging_steps, save_strategy="no", use_cpu=True, dataloader_pin_memory=False,
        seed=args.seed, bf16=args.bf16,
        include_num_input_tokens_seen="non_padding")  # count the real tokens (as hostkit's manifest does)
    trainer = Trainer(model=model, args=targs, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True))  # pads labels with -100
    result = trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    train_s = result.metrics["train_runtime"]
    tokens = int(trainer.state.num_input_tokens_seen)
    model.save_pretrained(args.out_dir + "/adapter")
    print(json.dumps({"train_s": train_s, "loss": losses[-1], "mean_loss": sum(losses) / len(losses),
                      "tokens": tokens, "tokens_per_s": tokens / train_s}), flush=True)


if __name__ == "__main__":
    main()
