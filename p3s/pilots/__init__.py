"""Pilots: warm Dask workers (local, or on Slurm/HTCondor through dask-jobqueue) that run many
Prefect flow runs in turn, driven by the ``p3s-pilot`` worker type (:mod:`p3s.pilots.worker`).

Every module of the folder, and what it may import: ``p3s/pilots/README.md``.
"""
