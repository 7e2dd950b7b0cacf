"""recsvc: a recommendation microservice for customer-service chatbots.

Importing the package pins BLAS and OpenMP to one thread per process unless the caller chose
otherwise. It has to happen here, before numpy or implicit are imported anywhere: measured on a
2-core machine, default threading made a fold-in 80x slower and ALS fits 4-13x slower through
oversubscription, and changing the limit later with threadpoolctl did not fully help.
"""

import os as _os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
