"""Deployment: seal bundles, move them to hosts, switch releases atomically, roll back.

- ``bundle``: ``finalize_bundle`` (manifest.json with sha256 of every file) and ``pack_bundle``.
- ``transport``: ``LocalTransport`` (a directory here) and ``SSHTransport`` (Fabric, host keys
  verified), both raising ``DeployError`` whose message starts with the host.
- ``releases``: ``ship``, ``rollback``, ``current_release``, ``list_releases``, ``verify_remote``
  — one implementation of the release layout for every transport.
- ``preflight``: architecture, python, disk and runtime-import checks; ``install_requirements``.

Nothing is imported here, so ``import engine.deploy.bundle`` does not pull in Fabric.
"""
