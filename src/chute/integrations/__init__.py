"""Integrations: DataModules that run another project's loader, with the contract that loader allows.

Every DataModule in :mod:`chute.datamodules` reads through chute's one loader core
(:func:`chute.loader.build_loader`: chute's orders, one position, one split rule across ranks) and
so holds chute's whole contract by construction. An integration hands the reading to another
project, whose loader decides the order, the split across ranks and workers and the resume state;
chute adapts around it and holds what that loader allows. Its contract is written here, and
``tests/test_contract.py`` checks each integration against its own row (``tests/contract_kinds.py``
says which checks are relaxed), with its own resume tests beside it.

:class:`~chute.integrations.litdata.LitDataModule` (LitData's ``StreamingDataLoader``):

=================================  =================================================================
chute's contract                   LitData integration
=================================  =================================================================
every training sample each epoch   yes: what LitData leaves of an epoch (whole batches per rank) is
                                   read as extra batches (:mod:`.litdata_cover`); on several nodes
                                   LitData plans as one node (its node-local plan drops samples)
repeats < ``world_size``           < ``world_size * batch_size`` (the extra batches even out ranks)
equal steps on every rank          yes
each evaluation sample once        yes (chute's evaluation order over LitData's reader)
same batches for any worker count  no: LitData assigns chunks to workers
threads backend, ``auto`` workers  refused (``ConfigError`` naming ``loader``)
resume mid-epoch                   exact with the same world size, workers and batch size; otherwise
                                   LitData's elastic resume, which may miss or repeat a few samples
                                   in that epoch
``on_error``, ``imbalance``        refused (``unsupported``): LitData reads and orders the chunks
an object store going away         waited for (``retry_seconds``) and resumed from the loader's own
                                   position (:mod:`.litdata_retry`); then a ``DataError`` naming
                                   the endpoint
=================================  =================================================================

LitData is an optional dependency (``pip install 'chute[litdata]'``), imported when first used.

:mod:`chute.integrations.ray_tasks` is the other kind of integration: an engine behind chute's own
loader (``loader.backend=ray``), not another loader. The order, the position and the split stay
chute's and only the reading runs as Ray tasks on a cluster, so it holds chute's whole contract
(the ``ray_images`` line of the contract suite, :class:`~chute.datamodules.RayImagesDataModule`).
Ray is optional too (``pip install 'chute[ray]'``).
"""

from chute.datamodules.base import ChuteDataModule
from chute.integrations.litdata import LitDataModule
from chute.integrations.litdata_copy import LitDataCopy

#: The integrations' DataModules by config name, as :data:`chute.datamodules.DATAMODULES` (schemas).
INTEGRATIONS: dict[str, type[ChuteDataModule]] = {"litdata": LitDataModule}

__all__ = ["INTEGRATIONS", "LitDataCopy", "LitDataModule"]
