"""Referral Factory's outbound webhooks: from an HTTP request to a recorded outcome.

    payload      what a delivery says: data, event, delivery key (pure)
    tokens       the shared token: required, constant-time compared (pure)
    deliveries   Delivery (and its lanes), DeliveryEvent, ServeStats, ``report``
    handler      WebhookHandler: ``screen`` a request from its head (401/404/413/503 before
                 any body is read), ``handle`` it (routes, 400, dedupe, each accepted delivery
                 recorded in the ledger before its 202 and queued) — no socket
    pool         DeliveryPool: a few worker threads, in order per lead, bounded stop
    worker       DeliveryWorker.process: push / record qualification, the outcome in the ledger
    http_server  the HTTP server (waitress) around ``handler``: connection cap, per-connection
                 deadline, size limits, trusted proxy, bounded stop

``services.serve.WebhookServer`` composes them into one recorded run; ``cli/serve.py`` adds
signals. Nothing here imports typer or rich, and nothing here logs the token.
"""
