"""The use cases, one module each: connect, validate, diagnose (with ``referral_story`` and
``bundle``), push (with ``lead_sources``), sync, qualify, serve, history, mapping_edit.

A use case takes a ``stsync.connection.Connection`` (or the paths and config it needs), does
its work through the engines, clients and storage below it, and returns a result object the
CLI renders. It never prints, and raises only ``stsync.errors`` classes for what a user can fix.
"""
