"""Ballast's protocol adapters (S3, FUSE, NBD, Docker) and the ``ballast`` command."""
