"""The federated reference trainer: a Flower app (ServerApp + ClientApp) with runwatch.

``runwatch train federated`` runs it (``trainer.federated.cli``); ``app/pyproject.toml`` is
the Flower App definition ``flwr run`` builds. The model and data are the centralized
trainer's; the data is split IID across clients in code (``trainer.federated.data``).
"""
