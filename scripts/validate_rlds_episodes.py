#!/usr/bin/env python3
"""Validate RLDS episode files: python scripts/validate_rlds_episodes.py PATHS... [--json] [--no-media]

Exit 0 when all are valid, 1 when any has an error, 2 on unreadable input. The rules live in
continuonbrain.rlds.validators (nbs/02a_rlds_validators.ipynb); this file is the playbook's entry point.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

from continuonbrain.config import run_cli  # noqa: E402
from continuonbrain.rlds.validators import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_cli(main, prog="validate_rlds_episodes.py"))
