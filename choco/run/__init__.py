"""The run layer: command-line programs and what only they use.

The library below it (topologies aside: :mod:`choco.gossip`, :mod:`choco.optim`,
:mod:`choco.compress`, :mod:`choco.comm`, :mod:`choco.tuning`, :mod:`choco.data`,
:mod:`choco.models`) never imports this package; only this layer imports :mod:`topologies`.

=======================  ==============================================================
module                   what it holds
=======================  ==============================================================
:mod:`.launch`           launcher detection, ``--backend``, ``--device``, the
                         :class:`~.launch.World`, exit codes, abort-on-error under MPI
                         and torchrun
:mod:`.cli`              options every program shares, one-paragraph argparse errors,
                         warnings, ``--help``/``--version``
:mod:`.files`            atomic writes, ``.npy`` input checks, output-path and memory
                         checks
:mod:`.config`           ``choco-train``'s :class:`~.config.TrainConfig` (TOML + options)
:mod:`.algorithms`       the algorithm registry (choco, exact, allreduce, dcd, ecd, local)
:mod:`.tasks`            image classification and language modelling tasks
:mod:`.schedule`         the learning-rate schedule
:mod:`.plan`             the validated run, identical on every node
:mod:`.metrics`          network metrics and the metrics file
:mod:`.train`            ``choco-train`` (``python -m choco.train``)
:mod:`.consensus`        ``python -m choco.consensus``
:mod:`.compress_cli`     ``python -m choco.compress``
:mod:`.tuning_cli`       ``python -m choco.tuning``
:mod:`.bench`            ``python -m choco.bench``
:mod:`.topologies_cli`   ``python -m topologies``
=======================  ==============================================================
"""
