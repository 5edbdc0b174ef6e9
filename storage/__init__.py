"""Ballast's storage layer: the strongly consistent key-value layer and the logics on top of it.

Imports point down only: ``storage`` may use ``dht`` and ``native``, never ``interfaces``.
"""
