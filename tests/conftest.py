"""Test-session settings: quiet TF logs, and deterministic op seeds."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
