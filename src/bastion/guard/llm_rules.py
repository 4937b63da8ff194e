"""The guard's language-model rules: a prompt-injection detector on inputs and a secret/system-prompt leak filter
on outputs.

- Injection: known-pattern heuristics over every user (and tool) turn, and over the decodings of encoded runs in
  it (base64, hex, rot13, reversed: `bastion.attacks.llm.leakage.decodings`, the same decoders the leak attack
  scores with). The patterns follow the attack taxonomies of Perez & Ribeiro ("Ignore Previous Prompt", NeurIPS ML
  Safety Workshop 2022: goal hijacking and prompt leaking), Liu et al. ("Formalizing and Benchmarking Prompt
  Injection Attacks and Defenses", USENIX Security 2024: escape characters, context ignoring, fake completion,
  combined) and Greshake et al. (AISec 2023: instructions inside retrieved content). They are public and therefore
  evadable by paraphrase; docs/guard.md gives the measured false-alarm rate on benign prompts.
- Leaks: the secrets are the policy's canaries plus every secret-looking token of the system prompt in effect (a
  word of >= 6 characters mixing letters and digits, or upper case joined by - or _: `ZX-7KQ2M9PA`, API keys,
  codes); a reply leaks when one comes back exact, normalised, fuzzy or decoded
  (`bastion.attacks.llm.leakage.canary_leaked`), or when its longest common substring with the system prompt covers
  `prompt_overlap` of it (`lcs_share`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.attacks.llm.leakage import canary_leaked, decodings, lcs_share

# (name, pattern) pairs; matched case-insensitively on each user turn and its decodings
PATTERNS: tuple[tuple[str, str], ...] = (
    ("ignore-previous", r"\b(ignore|disregard|forget|override|bypass|skip)\b[\w\s,'-]{0,30}\b(previous|prior|above|"
                        r"earlier|preceding|initial|original|system|all)\b[\w\s,'-]{0,20}\b(instructions?|prompts?|"
                        r"rules|directions|directives|guidelines|context|tasks?)\b"),
    ("new-instructions", r"\b(new|updated|real|actual|override)\s+(instructions?|task|rules|directive)\s*[:!]"),
    ("role-marker", r"(^|\n)\s*(system|assistant|developer)\s*:|<\|?(im_start|im_end|system|endoftext)\|?>|"
                    r"<(start|end)_of_turn>|\[/?INST\]|###\s*(system|instruction)"),
    ("fake-delimiter", r"\bend\s+of\s+(the\s+)?(document|input|text|context|prompt|user\s+input|data)\b"),
    ("fake-completion", r"(^|\n)\s*(answer|response|output|result)\s*:\s*\w+[.!]?\s*\n+\s*(new\s+)?"
                        r"(task|instruction|question)\b"),
    ("forced-output", r"\b(reply|respond|answer|say|print|output|write|return)\s+(only\s+|just\s+)?(with\s+)?"
                      r"(the\s+(word|text|string)\s+)?[\"'“]"),
    ("prompt-leak", r"\b(reveal|repeat|print|show|output|recite|quote|dump|spell|encode|translate|write|give\s+me|"
                    r"tell\s+me|what\s+(is|are|were|was))\b[\w\s,'-]{0,25}\b(your\s+(full\s+|exact\s+|hidden\s+|"
                    r"initial\s+|original\s+)?(system\s+prompt|prompt|instructions|configuration|rules|guidelines)|"
                    r"(the|your)\s+(system\s+prompt|hidden\s+prompt|secret(\s+(code|key|word))?|password|"
                    r"access\s+code))\b"),
    ("above-this", r"\b(everything|all|text|words)\s+(above|before)\s+(this|here)\b"),
    ("from-instructions", r"\b(from|in|of)\s+your\s+(instructions|system\s+prompt|prompt|configuration|rules)\b"),
    ("persona-switch", r"\byou\s+are\s+now\s+\w+|\bfrom\s+now\s+on,?\s+(you|ignore|respond|act)\b|"
                       r"\b(do\s+anything\s+now|developer\s+mode|jailbreak(ed)?\s+mode)\b"),
    ("payload-split", r"\blet\s+\w+\s*=\s*[\"'].*\b(concatenat\w*|\w+\s*\+\s*\w+)\b"),
    ("decode-and-follow", r"\b(decode|decipher|translate)\b[\w\s]{0,20}\b(base64|hex|rot13|cipher)\b[\w\s,]{0,20}"
                          r"\b(follow|execute|obey|do\s+what|run)\b"),
)
_COMPILED = [(name, re.compile(p, re.IGNORECASE | re.DOTALL)) for name, p in PATTERNS]
SECRET_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{4,}[A-Za-z0-9]")


def injection_hits(text: str) -> list[str]:
    """The names of the patterns that match `text` or one of its decodings (empty: nothing found)."""
    views = decodings(text)
    candidates = [text] + [views[k] for k in ("base64", "hex", "rot13", "reversed") if views[k].strip()]
    return sorted({name for name, rx in _COMPILED for view in candidates if rx.search(view)})


def scan_messages(messages: Sequence[dict[str, str]]) -> list[str]:
    """Injection pattern names found in the conversation's user and tool turns (system turns are the operator's,
    assistant turns the model's own)."""
    found: set[str] = set()
    for m in messages:
        if m.get("role") not in ("system", "assistant"):
            found.update(injection_hits(str(m.get("content", ""))))
    return sorted(found)


def secret_words(system_prompt: str) -> list[str]:
    """Secret-looking tokens of a system prompt (>= 6 characters): letters mixed with digits (`ab12cd`, API keys), or
    upper case joined by `-`/`_` (`ZX-QWERTYUP`)."""
    def looks_secret(w: str) -> bool:
        letters = any(c.isalpha() for c in w)
        joined_caps = w.upper() == w and ("-" in w or "_" in w) and sum(c.isalpha() for c in w) >= 4
        return letters and (any(c.isdigit() for c in w) or joined_caps)

    return [w for w in dict.fromkeys(SECRET_WORD.findall(system_prompt)) if looks_secret(w)]


@dataclass(frozen=True)
class Leak:
    rule: str  # "leak.canary" or "leak.system_prompt"
    how: str


def find_leak(reply: str, system_prompt: str | None, canaries: Sequence[str], fuzzy: float,
              prompt_overlap: float | None) -> Leak | None:
    """The first leak in `reply` of a canary, a secret word of the system prompt, or the system prompt itself."""
    if not reply.strip():
        return None
    secrets = [*canaries, *secret_words(system_prompt or "")]
    for secret in dict.fromkeys(secrets):
        how = canary_leaked(secret, reply, fuzzy)
        if how:
            return Leak("leak.canary", how)
    if system_prompt and prompt_overlap is not None:
        share = lcs_share(system_prompt, reply)
        if share >= prompt_overlap:
            return Leak("leak.system_prompt", f"overlap {share:.2f}")
    return None
