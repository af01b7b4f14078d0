"""Prompt-based correction (paper §4.2): critique advice -> themes -> golden rules -> {suggestions}.

    book = RuleBook(path=run_dir / "golden_rules.json", max_rules=5, every=10)
    book.add_advice(scores.advice, round=r, source="policy")        # judge answers that matched the label
    book.add_advice(external_advice, round=r, source="external")    # external critiques that agreed
    if book.maybe_update(r, generator):                             # every `every` rounds
        suggestions = book.suggestions()                            # -> the agent prompt's {suggestions}

An update groups the advice collected since the last update into at most `max_rules` themes (spherical
k-means over TF-IDF bag-of-words vectors, deterministic: no random init), and asks the generator (the
external endpoint, or the policy) for one golden rule per theme with the paper's suggestion prompt.
The rules replace the previous ones and are written as a new version of a JSON file (which round made
them, from which advice). A failed generation never raises: that theme is skipped, and an update with
no rule keeps the previous rules and the advice for the next try.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gcd_trl import files
from gcd_trl.prompts import load_template, render_suggestion_prompt

log = logging.getLogger(__name__)

FORMAT = "gcd-trl golden rules"
MAX_RULE_CHARS = 400
MAX_ADVICE_PER_THEME = 40
_STOPWORDS = frozenset(
    """a about above after again against all always an and any are as at be because been before being below
    between both but by can could did do does doing down during each every few for from further had has have
    having he her here hers him his how i if in into is it its itself just more most must my no nor not now
    of off on once only or other our out over own same she should so some such than that the their them then
    there these they this those through to too under until up very was we were what when where which while
    who whom why will with would you your yours agent action actions step steps task always never ensure
    make sure before after""".split()
)


def _stem(word: str) -> str:
    """Crude suffix folding, enough for advice sentences: repeating/repeated/repeats -> repeat."""
    for suffix in ("ing", "ed", "ly", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> list[str]:
    words = re.findall(r"[a-z]+", text.lower())
    out = []
    for w in words:
        if len(w) < 3 or w in _STOPWORDS:
            continue
        out.append(_stem(w))
    return out


def group_advice(texts: Sequence[str], max_groups: int) -> tuple[list[list[int]], list[str]]:
    """Cluster advice sentences into at most `max_groups` themes.

    Returns (groups: lists of indices into `texts`, largest first; theme names: each group's top terms).
    Sentences without any content word are left out. Deterministic: farthest-point initialisation from
    the most central sentence, then spherical k-means on TF-IDF vectors.
    """
    import numpy as np

    if max_groups < 1:
        raise ValueError(f"group_advice: max_groups must be >= 1, got {max_groups}")
    docs = [(i, _terms(t)) for i, t in enumerate(texts)]
    docs = [(i, terms) for i, terms in docs if terms]
    if not docs:
        return [], []
    vocab = sorted({w for _, terms in docs for w in terms})
    col = {w: j for j, w in enumerate(vocab)}
    df = Counter(w for _, terms in docs for w in set(terms))
    n = len(docs)
    x = np.zeros((n, len(vocab)))
    for row, (_, terms) in enumerate(docs):
        for w, c in Counter(terms).items():
            x[row, col[w]] = (c / len(terms)) * (math.log((1 + n) / (1 + df[w])) + 1.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    distinct = len({tuple(np.round(r, 9)) for r in x})
    k = min(max_groups, distinct)
    sim = x @ x.T
    centres = [int(np.argmax(sim.mean(axis=1)))]
    while len(centres) < k:
        nearest = sim[:, centres].max(axis=1)
        centres.append(int(np.argmin(nearest)))
    c = x[centres].copy()
    assign = np.full(n, -1)
    for _ in range(50):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                v = members.sum(axis=0)
                c[j] = v / (np.linalg.norm(v) or 1.0)
    groups, names = [], []
    for j in range(k):
        rows = np.flatnonzero(assign == j)
        if not len(rows):
            continue
        # members nearest the centre first (the prompt keeps the most typical when it must cut)
        rows = rows[np.argsort(-(x[rows] @ c[j]), kind="stable")]
        groups.append([docs[r][0] for r in rows])
        top = np.argsort(-c[j], kind="stable")[:3]
        names.append(", ".join(vocab[t] for t in top if c[j][t] > 0))
    order = sorted(range(len(groups)), key=lambda g: (-len(groups[g]), min(groups[g])))
    return [groups[g] for g in order], [names[g] for g in order]


def parse_rule(text: str) -> str | None:
    """The golden rule of a suggestion answer: the last <rule> block, else the last non-empty line after
    the reasoning; None when there is nothing usable."""
    found = re.findall(r"<rule>(.*?)</rule>", text, flags=re.DOTALL | re.IGNORECASE)
    if found:
        rule = found[-1]
    else:
        tail = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
        lines = [ln for ln in tail.splitlines() if ln.strip()]
        if not lines:
            return None
        rule = lines[-1]
    rule = rule.replace("**", "").strip()
    rule = re.sub(r"^(golden rule)\s*[:\-]?\s*", "", rule, flags=re.IGNORECASE)
    rule = " ".join(rule.strip(" \t\"'*").split())
    if not rule or "<" in rule and ">" in rule:
        return None
    return rule[:MAX_RULE_CHARS]


def read_rules(path: str | os.PathLike) -> list[str]:
    """The current golden rules of a rules file (for evaluation or a model card)."""
    return RuleBook.from_file(path).suggestions()


class RuleBook:
    """Advice in, golden rules out; versioned JSON file; checkpointable. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        max_rules: int = 5,
        every: int = 10,
        max_advice: int = 256,
        template: str | None = None,
    ) -> None:
        if max_rules < 1 or every < 1 or max_advice < 1:
            raise ValueError("RuleBook: max_rules, every and max_advice must be >= 1")
        self.path = Path(path) if path is not None else None
        self.max_rules, self.every, self.max_advice = max_rules, every, max_advice
        self.template = template if template is not None else load_template("suggestion")
        self.pending: list[dict[str, Any]] = []  # {"text", "round", "source"} since the last update
        self.versions: list[dict[str, Any]] = []
        self.last_update_round = -1
        self.failed_generations = 0

    @classmethod
    def from_args(
        cls, args: Any, path: str | os.PathLike | None = None, template: str | None = None
    ) -> RuleBook:
        """Build from a `GCDArguments` (correction_every, max_rules, correction_max_advice, rules_file)."""
        return cls(
            path if path is not None else args.rules_file,
            max_rules=args.max_rules,
            every=args.correction_every,
            max_advice=args.correction_max_advice,
            template=template,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> RuleBook:
        book = cls(path, **kwargs)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"golden rules file not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != FORMAT
            or not isinstance(data.get("versions"), list)
        ):
            raise ValueError(f"{path}: not a golden rules file (expected format {FORMAT!r} with 'versions')")
        book.load_state_dict(data)
        return book

    # ---- advice ---------------------------------------------------------------------------------------
    def add_advice(self, texts: Iterable[str], round: int, source: str) -> int:
        """Collect advice sentences (empty ones skipped); the oldest beyond `max_advice` are dropped."""
        added = 0
        for t in texts:
            t = " ".join(str(t or "").split())
            if t:
                self.pending.append({"text": t, "round": int(round), "source": source})
                added += 1
        del self.pending[: max(0, len(self.pending) - self.max_advice)]
        return added

    # ---- rules ----------------------------------------------------------------------------------------
    def suggestions(self) -> list[str]:
        """The current golden rules (the latest version), for the agent prompt's {suggestions}."""
        return [r["rule"] for r in self.versions[-1]["rules"]] if self.versions else []

    def due(self, round: int) -> bool:
        return round - self.last_update_round >= self.every

    def maybe_update(self, round: int, generator: Any, source: str = "") -> bool:
        """Update the rules when `every` rounds have passed since the last update (round: the 0-based index
        of the round just played). True when a new version was made."""
        if not self.due(round):
            return False
        return self.update(round, generator, source=source)

    def update(self, round: int, generator: Any, source: str = "") -> bool:
        """Group the pending advice, generate one rule per theme, save a new version. Never raises on a
        generator failure; True when a new version was made."""
        self.last_update_round = round
        if not self.pending:
            return False
        texts = [a["text"] for a in self.pending]
        groups, names = group_advice(texts, self.max_rules)
        prompts, themes = [], []
        for idx, name in zip(groups, names):
            unique = list(dict.fromkeys(texts[i] for i in idx))[:MAX_ADVICE_PER_THEME]
            prompts.append(render_suggestion_prompt(self.template, advice_list=unique, theme=name))
            themes.append((idx, name))
        try:
            outputs = [g.text for g in generator.generate(prompts)] if prompts else []
        except Exception as err:  # a rules update must never stop training
            log.warning(
                "golden rules: generation failed (%s: %s); keeping the previous rules",
                type(err).__name__,
                err,
            )
            self.failed_generations += len(prompts)
            return False
        rules, seen = [], set()
        for (idx, name), text in zip(themes, outputs):
            rule = parse_rule(text or "")
            if rule is None:
                self.failed_generations += 1
                continue
            if rule.lower() in seen:
                continue
            seen.add(rule.lower())
            used = [self.pending[i] for i in idx]
            rules.append(
                {
                    "rule": rule,
                    "theme": name,
                    "advice": [a["text"] for a in used],
                    "advice_rounds": sorted({a["round"] for a in used}),
                    "advice_sources": dict(Counter(a["source"] for a in used)),
                }
            )
        if not rules:
            log.warning(
                "golden rules: no usable rule in %d answers; keeping the previous rules", len(outputs)
            )
            return False
        self.versions.append(
            {
                "version": len(self.versions) + 1,
                "round": round,
                "generator": source,
                "advice_count": len(self.pending),
                "rules": rules,
            }
        )
        self.pending = []
        self.save()
        return True

    # ---- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "max_rules": self.max_rules,
            "last_update_round": self.last_update_round,
            "versions": self.versions,
            "pending": self.pending,
            "failed_generations": self.failed_generations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.versions = [dict(v) for v in state.get("versions", [])]
        self.pending = [dict(a) for a in state.get("pending", [])]
        self.last_update_round = int(state.get("last_update_round", -1))
        self.failed_generations = int(state.get("failed_generations", 0))

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the whole book (every version, the pending advice) atomically; no-op without a path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            return None
        files.write_json_atomic(target, self.state_dict())
        return target

    def metrics(self, prefix: str = "gcd/") -> dict[str, float]:
        return {
            f"{prefix}rules": float(len(self.suggestions())),
            f"{prefix}rules_version": float(len(self.versions)),
            f"{prefix}pending_advice": float(len(self.pending)),
            f"{prefix}rule_generation_failures": float(self.failed_generations),
        }
