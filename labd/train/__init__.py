"""The physics-aware trainer: networks of physical layers served by labd daemons.

Modules (each states its contract):

* ``datasets``  vowels (shipped, ``data/vowels.csv``), MNIST (IDX files, documented lookup), CSV;
* ``hardware``  one system on one daemon, as the trainer sees it, with shot counting;
* ``layers``    ``PhysicalLayer`` and the PAT autograd function, rescaling, readout, network;
* ``twins``     digital twins: data collection, fitting, saving, refinement during PAT;
* ``arch``      the default network per task and system (what is physical, what is digital);
* ``loop``      epochs, hardware evaluation, checkpoints, metrics;
* ``run``       one run end to end (``labd train``); ``reproduce`` the paper's experiments;
* ``plots``     figures; ``cli`` the command-line entry points.

The trainer talks to instruments only through the wire (``labd.client``); it never imports
instrument code. Nominal models come from ``drivers.physics`` (pure torch, no instruments).
"""
