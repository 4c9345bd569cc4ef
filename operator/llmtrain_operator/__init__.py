"""llmtrain operator: the LLMTrainingJob API (api.py), its CRD (crdgen.py) and the kopf controller (handlers.py)."""
