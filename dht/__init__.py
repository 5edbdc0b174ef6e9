"""Ballast's overlay: identities, passports, the secure transport, RPC, Kademlia and membership.

``dht`` knows nothing of blocks; it may import ``native`` only.
"""
