"""One Prefect flow per dvc.yaml stage; `python -m flows.<stage>` is the stage's command.

Set here, before any stage imports a library, so that no run phones home: this pipeline
runs on machines where only the package index (and optionally the model hub) is reachable.
"""

import os

for _name, _value in {
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
