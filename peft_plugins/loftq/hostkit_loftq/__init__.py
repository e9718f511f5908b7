"""hostkit-loftq: the ``LoftQ`` pass (LoftQ, arXiv:2310.08659) for hostkit.

``plugin`` is the entry-point target (hookimpls only, no heavy imports),
``config`` the options, ``init`` the LoftQ initialisation itself (bitsandbytes
nf4 + low-rank SVD, CPU or GPU) and ``run`` the pass, which hands training to
hostkit-lora's machinery.
"""

__version__ = "0.1.0"
