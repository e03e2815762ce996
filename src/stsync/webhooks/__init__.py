"""Referral Factory's outbound webhooks: from an HTTP request to a recorded outcome.

    payload        what a delivery says: data, event, delivery key (pure)
    tokens         the shared token: required, constant-time compared (pure)
    deliveries     Delivery, DeliveryEvent, ServeStats, the outcome names, ``report``
    handler        WebhookHandler.handle(Request) -> Response: routes, 401/400/413/503,
                   dedupe in the ledger, accepted deliveries queued (no socket)
    worker         DeliveryWorker: one thread, arrival order, push / record qualification,
                   each outcome in the ledger
    stdlib_server  the HTTP adapter (http.server) around ``handler``; the one module a
                   production server library replaces

``services.serve.WebhookServer`` composes them into one recorded run; ``cli/serve.py`` adds
signals. Nothing here imports typer or rich, and nothing here logs the token.
"""
