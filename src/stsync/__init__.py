"""stsync: Referral Factory ⇄ ServiceTitan.

Layers, one direction: ``cli`` → ``services`` → ``servicetitan`` / ``referralfactory``
(HTTP clients) and ``storage`` (config, secrets, ledger). Nothing below ``cli`` imports
typer or rich; the ``sandbox`` depends on nothing of the clients.
"""

__version__ = "0.1.0"
