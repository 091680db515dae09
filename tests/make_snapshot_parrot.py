"""Write tests/data/snapshot_parrot: the parrot every test runs (the `parrot` fixture).

Snapshots show the token inspector's probabilities. Training the parrot in the test run gives
slightly different weights on different CPUs (their float reductions differ), and costs 40 s or
more, so the tests use this saved copy instead. Run `PYTHONPATH=src:tests python tests/make_snapshot_parrot.py`
only when the checkpoint format changes, then redraw the snapshots.
"""

import shutil
from pathlib import Path

from helpers import save_tiny_checkpoint, train_parrot

TARGET = Path(__file__).parent / "data" / "snapshot_parrot"

if __name__ == "__main__":
    model, _ = train_parrot()
    shutil.rmtree(TARGET, ignore_errors=True)
    print(save_tiny_checkpoint(TARGET, model, name="parrot"))
