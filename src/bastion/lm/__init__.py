"""Language-model targets and tiny LMs for the LLM threat family.

`open_lm(spec, ...) -> LMTarget` (see `bastion.lm.lm_target` for the interface), `Sampling`, `Reply`,
`gemma_path()` (the Gemma 3 270M GGUF of the `llm` extra). The chat format for models without a template is in
`bastion.lm.chat_format`.
"""

from bastion.lm.gemma import gemma_path
from bastion.lm.lm_target import MAX_NEW_TOKENS, LMTarget, Reply, Sampling, TargetError, open_lm

__all__ = ["MAX_NEW_TOKENS", "LMTarget", "Reply", "Sampling", "TargetError", "gemma_path", "open_lm"]
