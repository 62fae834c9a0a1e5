"""startup_s is measured from the process start, not from when the toolkit was imported."""
import subprocess
import sys


def test_seconds_since_process_start_include_time_before_import():
    code = "import time; time.sleep(1.0); from classifier.startup import seconds_since_start as s; print(s())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert 1.0 <= float(out.stdout) < 30.0
