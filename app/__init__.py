"""The DeepLense anomaly scoring service (FastAPI): `app.main:app` or `create_app(settings)`.

Before anything imports torch: OpenMP worker threads wait passively (sleep) between parallel
regions instead of spinning. A serving process shares its cores with the event loop and the
decoding threads (and, on a shared machine, with other processes); with libgomp's default
spinning, a 2-thread forward pass on a busy 2-core machine was measured 6x to 40x slower
(CPU burnt in spin loops), with passive waiting as fast as on an idle one. Set
OMP_WAIT_POLICY=ACTIVE in the environment to get the spinning back.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
