"""`bastion guard`: a protected inference service (docs/guard.md).

Bastion's classifier protocol on Starlette/uvicorn, in front of a model loaded in the sandboxed worker, with
per-key rules from a validated policy (input checks, rate limits and budgets, an extraction monitor, output
hardening, adversarial and backdoor detectors, ceilings) and an SQLite audit log; language models behind the
OpenAI-compatible chat API (`llm_app`, `llm_rules`: token limits, injection detector, leak filter). Needs the
`guard` extra.
"""
