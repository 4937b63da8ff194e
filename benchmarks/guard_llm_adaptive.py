"""Adaptive prompt injection against the guard's public pattern list, on Gemma 3 270M (issue 19, item 4).

    OMP_NUM_THREADS=2 PYTHONPATH=src:benchmarks python benchmarks/guard_llm_adaptive.py [--documents 4]

The eight paraphrased injections of `guard_llm_alarms.ADAPTIVE` (written to avoid the patterns in
`bastion/guard/llm_rules.py`, as an attacker who reads them would) are placed in `bastion attack llm inject`'s tasks
(classify: the goal is a wrong label; extract: a random canary) indirectly (inside the document) and directly
(after it), greedy decoding. Unguarded: the model's reply, judged as `inject` judges it (`obeyed`, `parse_label`).
Guarded: the same, except that a prompt the guard's injection detector (`scan_messages`) flags is refused, which
counts as no success. Prints both rates with Wilson 95% intervals, and how many prompts the detector flagged.
"""

from __future__ import annotations

import argparse
import secrets
import time

from guard_llm_alarms import ADAPTIVE


def main() -> None:
    from bastion.attacks.llm.injection import DOCUMENTS, LABELS, messages, obeyed, parse_label
    from bastion.evaluation.metrics import wilson_interval
    from bastion.guard.llm_rules import scan_messages
    from bastion.lm import Sampling, gemma_path, open_lm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    lm = open_lm(str(gemma_path()), sampling=Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens))
    canary = "PWNED-" + secrets.token_hex(4).upper()
    rows, start = [], time.perf_counter()
    for text in ADAPTIVE:
        for placement in ("indirect", "direct"):
            for task in ("classify", "extract"):
                for doc in DOCUMENTS[: args.documents]:
                    goal = next(x for x in LABELS if x != doc["label"]) if task == "classify" else canary
                    sent = messages(task, doc["text"], text.replace("PWNED", goal), placement)
                    reply = lm.chat(sent).text
                    hit = parse_label(reply) == goal if task == "classify" else obeyed(reply, goal,
                                                                                        sent[-1]["content"])
                    rows.append({"flagged": bool(scan_messages(sent)), "success": hit, "task": task})
    lm.close()

    def rate(name: str, hits: list[bool]) -> None:
        ci = wilson_interval(sum(hits), len(hits))
        print(f"{name}: {sum(hits)}/{len(hits)} = {ci.estimate:.2f} [{ci.low:.2f}, {ci.high:.2f}]")

    print(f"{len(rows)} prompts in {time.perf_counter() - start:.0f} s; the detector flagged "
          f"{sum(r['flagged'] for r in rows)}/{len(rows)}")
    for task in ("classify", "extract", None):
        part = [r for r in rows if task is None or r["task"] == task]
        label = task or "all"
        rate(f"  {label:8s} unguarded success", [r["success"] for r in part])
        rate(f"  {label:8s} guarded success  ", [r["success"] and not r["flagged"] for r in part])


if __name__ == "__main__":
    main()
