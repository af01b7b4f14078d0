"""The tiny cold start's recipe, measured without TRL: the same model, data, AdamW and assistant-only masking
as `gcd-trl sft`, trained for a wall-clock budget (`minutes=2,4`: evaluate after 2 and 4 minutes of training
time) or a token budget (`evals=600000,...`), then greedy outputs on held-out states (teacher-forced: the
expert's history) scored as admissible / the expert's action. docs/sft.md quotes its runs.

    .venv/bin/python -m gcd_trl tiny-model --out /tmp/tm --entity_tokens
    .venv/bin/python -m gcd_trl data agent-sft --games data/alfworld/games/heldout --prompt_template \
        alfworld_compact --think short --recovery_episodes 0 --oversample_max 1 --output_dir /tmp/ho
    THREADS=2 .venv/bin/python experiments/sft_recipe_sweep.py /tmp/tm \
        data/alfworld/agent_sft_alfworld_compact/train.jsonl /tmp/ho/train.jsonl /tmp NAME lr=0.0005 minutes=2,4

Keys: loss (assistant|full|mixed), lr, batch, hist (history pairs kept), oversample (0: drop copies),
sched (const|cos), types (task types, e.g. pick_and_place+look_at_obj), bf16, save (a folder for the model;
with save_each=1 one model per evaluation point, in SAVE/NAME_<tokens>M, for closed-loop evals of each),
adm_w (weight of an extra loss, -log P(any admissible continuation), on the action's tokens: a trie over the
prompt's action list; and on the think's entity tokens: the list's entities; 0: off).
"""

import json
import math
import os
import random
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gcd_trl.rollout.parse import parse_output

torch.set_num_threads(int(os.environ.get("THREADS", "2")))

DEV = "cuda" if torch.cuda.is_available() else "cpu"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def set_history(prompt: str, k: int) -> str:
    lines = prompt.split("\n")
    out, hist, in_hist = [], [], False
    for line in lines:
        if line.startswith("Recent steps:"):
            in_hist = True
            continue
        if in_hist and line.startswith("["):
            hist.append(line)
            continue
        if in_hist:
            in_hist = False
            if k > 0 and hist:
                out.append("Recent steps:")
                out.extend(hist[-k:])
        out.append(line)
    return "\n".join(out)


def main():
    model_dir, train_path, ho_path, out_dir, name = sys.argv[1:6]
    cfg = dict(
        loss="assistant",
        lr=1e-3,
        batch=16,
        hist=2,
        oversample=1,
        budget=630_000,
        seed=0,
        prompt_w=0.0,
        sched="const",
        evals="600000,1200000,2500000,5000000",
        types="",
        bf16=1,
        minutes="",
        save="",
        save_each=0,
        adm_w=0.0,
    )
    for kv in sys.argv[6:]:
        k, v = kv.split("=")
        cfg[k] = type(cfg[k])(v) if not isinstance(cfg[k], float) else float(v)
    checkpoints = [int(x) for x in cfg["evals"].split(",")]
    mins = [float(x) for x in cfg["minutes"].split(",") if x]
    train_time = 0.0
    by_time = bool(mins)
    cfg["budget"] = max(checkpoints)
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(DEV)
    rows = [json.loads(line) for line in open(train_path)]
    keep = [t for t in cfg["types"].split("+") if t]
    if keep:
        rows = [r for r in rows if any(t in r["task"] for t in keep)]
    if not cfg["oversample"]:
        rows = [r for r in rows if not r.get("oversampled")]
    enc = []
    ent_ids = entity_token_ids(tok) if cfg["adm_w"] else set()
    for r in rows:
        msgs = [
            {"role": "user", "content": set_history(r["messages"][0]["content"], cfg["hist"])},
            r["messages"][1],
        ]
        out = tok.apply_chat_template(
            msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        allowed = admissible_targets(tok, r, out["input_ids"], ent_ids) if cfg["adm_w"] else []
        enc.append((out["input_ids"], out["assistant_masks"], allowed))
    mean_len = sum(len(e[0]) for e in enc) / len(enc)
    steps = int(cfg["budget"] / (mean_len * cfg["batch"]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    warm = 30 if cfg["sched"] == "const" else max(1, int(0.03 * steps))

    def lr_at(s):
        if s < warm:
            return cfg["lr"] * (s + 1) / warm
        if cfg["sched"] == "const":
            return cfg["lr"]
        p = (s - warm) / max(1, steps - warm)
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * p))

    order = []
    rng = random.Random(cfg["seed"])
    t0 = time.time()
    tokens = 0
    results = []
    steps = 10**9
    model.train()
    for s in range(steps):
        ts = time.time()
        if len(order) < cfg["batch"]:
            idx = list(range(len(enc)))
            rng.shuffle(idx)
            chunks = [idx[i : i + 50 * cfg["batch"]] for i in range(0, len(idx), 50 * cfg["batch"])]
            batches = []
            for c in chunks:
                c.sort(key=lambda i: len(enc[i][0]))
                batches += [c[i : i + cfg["batch"]] for i in range(0, len(c), cfg["batch"])]
            rng.shuffle(batches)
            order += [i for b in batches for i in b]
        b, order = order[: cfg["batch"]], order[cfg["batch"] :]
        width = max(len(enc[i][0]) for i in b)
        ids = torch.zeros(len(b), width, dtype=torch.long)
        att = torch.zeros(len(b), width, dtype=torch.long)
        amask = torch.zeros(len(b), width)
        cpos = []
        for j, i in enumerate(b):
            x, m, cons = enc[i]
            cpos += [(j, pos, ids_ok) for pos, ids_ok in cons]
            ids[j, : len(x)] = torch.tensor(x)
            att[j, : len(x)] = 1
            amask[j, : len(x)] = torch.tensor(m, dtype=torch.float)
        ids, att, amask = ids.to(DEV), att.to(DEV), amask.to(DEV)
        tokens += int(att.sum())
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=bool(cfg["bf16"])):
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        tgt = ids[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
        a = amask[:, 1:]
        valid = att[:, 1:].float()
        if cfg["loss"] == "assistant":
            loss = (nll * a).sum() / a.sum()
        elif cfg["loss"] == "full":
            loss = (nll * valid).sum() / valid.sum()
        else:  # mixed: assistant mean + prompt_w * prompt mean
            p = valid - a
            loss = (nll * a).sum() / a.sum() + cfg["prompt_w"] * (nll * p).sum() / p.sum()
        if cpos:  # -log P(any admissible continuation) at the constrained positions
            lg = logits[[c[0] for c in cpos], [c[1] for c in cpos]]
            mask = torch.full_like(lg, float("-inf"))
            for k, c in enumerate(cpos):
                mask[k, c[2]] = 0.0
            loss = loss + cfg["adm_w"] * (torch.logsumexp(lg, -1) - torch.logsumexp(lg + mask, -1)).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        train_time += time.time() - ts
        pending = mins if by_time else checkpoints
        hit = pending and (train_time >= pending[0] * 60 if by_time else tokens >= pending[0])
        if hit:
            pending.pop(0)
            checkpoints = pending
            adm, ex, samples = evaluate(model, tok, ho_path, cfg["hist"], keep)
            results.append((round(train_time), tokens, s + 1, round(float(loss), 3), adm, ex))
            print(name, tokens, s + 1, adm, ex, samples if not checkpoints else "", flush=True)
            if cfg["save"] and cfg["save_each"]:
                _save(model, tok, f"{cfg['save']}/{name}_{tokens / 1e6:.1f}M")
            if not checkpoints:
                break
    print(
        json.dumps(
            dict(
                name=name,
                **cfg,
                results=results,
                mean_len=round(mean_len, 1),
                train_s=round(time.time() - t0, 1),
            )
        ),
        flush=True,
    )
    if cfg["save"] and not cfg["save_each"]:
        _save(model, tok, cfg["save"])
    with open(f"{out_dir}/{name}.json", "w") as f:
        f.write(json.dumps(dict(name=name, **cfg, results=results)) + "\n")


def listed_actions(row) -> list[str]:
    """The admissible actions a row's prompt lists (the compact template's "Actions: 'a', 'b'" line)."""
    line = next(ln for ln in row["messages"][0]["content"].split("\n") if ln.startswith("Actions: "))
    return [a.strip("'") for a in line[len("Actions: ") :].split("', '")]


def entity_token_ids(tok) -> set[int]:
    """The ids of the tiny model's entity tokens (" shelf 1"), if its tokenizer has them."""
    from gcd_trl.tiny_model import entity_tokens

    vocab = tok.get_vocab()
    return {vocab[e] for e in entity_tokens() if e in vocab}


def admissible_targets(tok, row, ids, entity_ids):
    """(logit position, allowed next-token ids) for adm_w: along the expert's action, every token that
    continues some admissible action (a trie over the prompt's list); in the think, any entity token of
    the list where the expert's think names an entity. [] where the row does not fit (no tags)."""
    actions = listed_actions(row)
    open_a, close_a, open_t = tok.convert_tokens_to_ids(["<action>", "</action>", "<think>"])
    try:
        start, end, think = (len(ids) - 1 - ids[::-1].index(t) for t in (open_a, close_a, open_t))
    except ValueError:
        return []
    expert = ids[start + 1 : end]
    cands = [tok(a, add_special_tokens=False)["input_ids"] for a in actions]
    out = []
    for j in range(len(expert) + 1):
        allowed = {c[j] for c in cands if len(c) > j and c[:j] == expert[:j]}
        if any(c == expert[:j] for c in cands):
            allowed.add(close_a)
        if (expert[j] if j < len(expert) else close_a) not in allowed:
            return []  # the expert's action is not on the list as tokenized: leave the row alone
        if len(allowed) > 1:
            out.append((start + j, sorted(allowed)))
    listed = sorted({t for c in cands for t in c if t in entity_ids})
    out += [(p - 1, listed) for p in range(think + 1, start) if ids[p] in listed and len(listed) > 1]
    return out


def _save(model, tok, path):
    """Weights in bf16 (half the bytes: small enough to copy back from a GPU machine), loadable as usual."""
    state = {k: v.detach().to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
    model.save_pretrained(path, state_dict=state)
    tok.save_pretrained(path)


def evaluate(model, tok, ho_path, hist, keep):
    model.eval()
    ho = [json.loads(line) for line in open(ho_path)]
    ho = [r for r in ho if not r.get("oversampled") and (not keep or any(t in r["task"] for t in keep))]
    tok.padding_side = "left"
    adm = exact = 0
    samples = []
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for i in range(0, len(ho), 128):
        chunk = ho[i : i + 128]
        prompts = [
            tok.apply_chat_template(
                [{"role": "user", "content": set_history(r["messages"][0]["content"], hist)}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for r in chunk
        ]
        x = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(DEV)
        with torch.no_grad():
            g = model.generate(
                **x,
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=[eos, tok.pad_token_id],
                pad_token_id=tok.pad_token_id,
            )
        texts = tok.batch_decode(g[:, x["input_ids"].shape[1] :], skip_special_tokens=True)
        for r, t in zip(chunk, texts):
            acts = listed_actions(r)
            p = parse_output(t, acts)
            ok = bool(p.valid and p.action in acts)
            adm += ok
            exact += ok and p.action == r["action"]
            if len(samples) < 6 and i == 0:
                samples.append(f"{t[:70]!r} | {r['action']} | {ok}")
    model.train()
    return round(adm / len(ho), 3), round(exact / len(ho), 3), samples + [f"n={len(ho)}"]


if __name__ == "__main__":
    main()
