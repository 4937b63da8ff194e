"""Language-model targets and tiny LMs for the LLM threat family."""
