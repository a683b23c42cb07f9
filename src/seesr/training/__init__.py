"""Training for both SeeSR stages (accelerate-based): ``seesr train dape`` and ``seesr train seesr``.

* :mod:`seesr.training.config` — typed YAML configs (:class:`TrainDAPEConfig`, :class:`TrainSeeSRConfig`);
* :mod:`seesr.training.train_dape` — stage 1, ``main(config)``;
* :mod:`seesr.training.train_seesr` — stage 2, ``main(config)``;
* :mod:`seesr.training.losses` — Eq. (1) and Eq. (2).

Heavy libraries are imported by the stage modules only.
"""

from __future__ import annotations
