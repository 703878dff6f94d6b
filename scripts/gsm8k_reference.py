#!/usr/bin/env python3
"""Independent reference for `llmq eval --gsm8k`: builds the prompts and scores logged outputs
the way lm-evaluation-harness does, with the harness's own mechanisms (Jinja2 templates,
random.Random(seed).sample over the few-shot docs, re.findall filters, re.sub normalisation),
but without lm-eval itself, so it runs where only python3 + jinja2 are installed.

  gsm8k_reference.py prompts --test T --train K [--style gsm8k|cot-llama] [--fewshot N]
                             [--limit N] [--seed S]
      one JSON line per doc: doc_id, exemplar ids, prompt (for cot-llama rendered with the
      --chat llama3|llama3.1 template), FNV-1a-64 of the prompt text (llmq's prompt_hash)
  gsm8k_reference.py check --samples FILE [--style ...]
      re-extracts strict/flexible answers from each logged `output` and re-scores them against
      the logged `target`; prints mismatches with llmq and exits 1 if there are any.

The rules (and their sources) are written down in eval/gsm8k.h.
"""
import argparse
import json
import random
import re
import sys

from jinja2 import BaseLoader, Environment, StrictUndefined

# lm_eval/utils.py: the environment every doc_to_text / doc_to_target goes through.
ENV = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)

GSM8K = {
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{answer}}",
    "target_delimiter": " ",
    "fewshot_delimiter": "\n\n",
    "num_fewshot": 5,
    "strict": ("#### (\\-?[0-9\\.\\,]+)", 0),
    "flexible": ("(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
    "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
}
COT_LLAMA = {
    "doc_to_text": ("Given the following problem, reason and give a final answer to the problem.\n"
                    "Problem: {{question}}\nYour response should end with \"The final answer is "
                    "[answer]\" where [answer] is the response to the problem.\n"),
    "doc_to_target": "{{answer.split('####')[-1].strip() if answer is defined else target}}",
    "num_fewshot": 8,
    "strict": ("The final answer is ((-?[$0-9.,]{2,})|(-?[0-9]+))", -1),
    "flexible": ("(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
    "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"],
}


def cot_exemplars():
    # Imported from the C++ side would defeat the purpose; the eight Wei et al. exemplars are
    # given as data in gsm8k-cot-llama.yaml and repeated in eval/gsm8k_prompts.cc.
    path = __file__.rsplit("/", 2)[0] + "/eval/gsm8k_prompts.cc"
    text = open(path, encoding="utf-8").read()
    block = text.split("// BEGIN COT EXEMPLARS")[1].split("// END COT EXEMPLARS")[0]
    pairs = re.findall(r'\{"((?:[^"\\]|\\.)*)",\s*"((?:[^"\\]|\\.)*)"\}', block, re.S)
    unq = lambda s: json.loads('"' + s + '"')
    return [{"question": unq(q), "target": unq(t)} for q, t in pairs]


# The message loop of the Meta-Llama-3(.1)-Instruct chat templates (tokenizer_config.json),
# without tools; 3.1 always opens with a system block carrying the default date.
LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}")
LLAMA31_SYSTEM = ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                  "Today Date: 26 Jul 2024\n\n<|eot_id|>")


def render_chat(messages, kind):
    bos = "<|begin_of_text|>"
    text = ENV.from_string(LLAMA3_CHAT).render(messages=messages, bos_token=bos)
    if kind == "llama3.1":
        text = bos + LLAMA31_SYSTEM + text[len(bos):]
    return text


def render(template, doc):
    return ENV.from_string(template).render(**doc)


def fnv1a64(data: bytes) -> str:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def findall_select(pattern, group_select, text, fallback="[invalid]"):
    # lm_eval/filters/extraction.py RegexFilter.apply
    match = re.compile(pattern).findall(text)
    if not match:
        return fallback
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m][0]
    return match.strip()


def normalise(s, regexes):
    # lm_eval/api/metrics.py exact_match_hf_evaluate: re.sub each regex, then lower()
    for r in regexes:
        s = re.sub(r, "", s)
    return s.lower()


def cmd_prompts(a):
    spec = GSM8K if a.style == "gsm8k" else COT_LLAMA
    k = a.fewshot if a.fewshot >= 0 else spec["num_fewshot"]
    test = load_jsonl(a.test)
    n = len(test) if a.limit <= 0 else min(a.limit, len(test))
    if a.style == "gsm8k":
        train = load_jsonl(a.train)
        rnd = random.Random(a.seed)  # Task.set_fewshot_seed
        for doc_id in range(n):
            doc = test[doc_id]
            ids = rnd.sample(range(len(train)), k)  # == rnd.sample(list(train_docs), k)
            chosen = [i for i in ids if train[i] != doc][:k]
            ctx = ""
            for i in chosen:
                ex = train[i]
                ctx += (render(spec["doc_to_text"], ex) + spec["target_delimiter"] +
                        render(spec["doc_to_target"], ex) + spec["fewshot_delimiter"])
            prompt = ctx + render(spec["doc_to_text"], doc)
            print(json.dumps({"doc_id": doc_id, "exemplars": chosen, "prompt": prompt,
                              "prompt_hash": fnv1a64(prompt.encode())}, ensure_ascii=False))
    else:
        shots = cot_exemplars()[:k]  # first_n sampler
        for doc_id in range(n):
            doc = test[doc_id]
            msgs = []
            for ex in shots:
                msgs.append({"role": "user", "content": render(spec["doc_to_text"], ex)})
                msgs.append({"role": "assistant", "content": render(spec["doc_to_target"], ex)})
            msgs.append({"role": "user", "content": render(spec["doc_to_text"], doc)})
            prompt = render_chat(msgs, a.chat)
            print(json.dumps({"doc_id": doc_id, "exemplars": list(range(len(shots))), "prompt": prompt,
                              "prompt_hash": fnv1a64(prompt.encode()),
                              "target": render(spec["doc_to_target"], doc)}, ensure_ascii=False))


def cmd_check(a):
    spec = GSM8K if a.style == "gsm8k" else COT_LLAMA
    bad = 0
    rows = load_jsonl(a.samples)
    for row in rows:
        out, target = row["output"], row["target"]
        strict = findall_select(*spec["strict"], out)
        flexible = findall_select(*spec["flexible"], out)
        ref = normalise(target, spec["regexes_to_ignore"])
        got = {"strict": strict, "flexible": flexible,
               "strict_correct": normalise(strict, spec["regexes_to_ignore"]) == ref,
               "flexible_correct": normalise(flexible, spec["regexes_to_ignore"]) == ref}
        for key, val in got.items():
            if row[key] != val:
                bad += 1
                print(f"doc {row['doc_id']}: {key}: llmq {row[key]!r} reference {val!r}")
    print(f"{len(rows)} samples checked, {bad} mismatches")
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prompts")
    pp.add_argument("--test", required=True)
    pp.add_argument("--train")
    pp.add_argument("--style", default="gsm8k", choices=["gsm8k", "cot-llama"])
    pp.add_argument("--fewshot", type=int, default=-1)
    pp.add_argument("--limit", type=int, default=0)
    pp.add_argument("--seed", type=int, default=1234)
    pp.add_argument("--chat", default="llama3.1", choices=["llama3", "llama3.1"])
    pc = sub.add_parser("check")
    pc.add_argument("--samples", required=True)
    pc.add_argument("--style", default="gsm8k", choices=["gsm8k", "cot-llama"])
    a = p.parse_args()
    if a.cmd == "prompts":
        if a.style == "gsm8k" and not a.train:
            p.error("--train is needed for the gsm8k style")
        cmd_prompts(a)
        return 0
    return cmd_check(a)


if __name__ == "__main__":
    sys.exit(main())
