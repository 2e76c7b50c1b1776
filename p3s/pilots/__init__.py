"""Pilots: warm Dask workers (local, or on Slurm/HTCondor through dask-jobqueue) that run many
Prefect flow runs in turn, driven by the ``p3s-pilot`` worker type.

* :mod:`p3s.pilots.cluster` builds the Dask cluster of a :class:`~p3s.blocks.pilot_pool.PilotPool`;
* :mod:`p3s.pilots.execute` is what runs on a pilot: one forked child process per flow run;
* :mod:`p3s.pilots.scaling` decides how many pilots the backlog needs;
* :mod:`p3s.pilots.limits` applies per-jobtype concurrency limits;
* :mod:`p3s.pilots.status` publishes and reads the pilot counts;
* :mod:`p3s.pilots.worker` is the Prefect worker that ties them together.
"""
