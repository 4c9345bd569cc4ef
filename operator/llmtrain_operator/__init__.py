"""llmtrain operator: the LLMTrainingJob API (api.py), its CRD (crdgen.py), reconcile policies (reconcile.py), runtime
(controller.py) and kopf wiring (handlers.py)."""
