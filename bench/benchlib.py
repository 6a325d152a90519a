"""What the Python benchmark scripts share: where things are, the manifest
generator, and the shell helpers of lib.sh."""
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)
gen = __import__("gen-manifests")
WICKET = os.environ.get("WICKET", os.path.join(REPO, "target/release/wicket"))


def out_dir(name: str) -> str:
    """target/bench-out/NAME, where a script keeps what it wrote."""
    return os.path.join(REPO, "target/bench-out", name)


def sh(cmd: str) -> str:
    """Runs CMD in bash after sourcing lib.sh; returns its stdout."""
    return subprocess.run(["bash", "-c", f'. "{HERE}/lib.sh"; {cmd}'],
                          check=True, capture_output=True, text=True).stdout.strip()


def stop_wicket(wicket, log_path: str) -> None:
    """SIGTERM to a wicket process (SIGKILL after 30 s), then make sure the
    nginx it started (named in its log) is gone too."""
    if wicket is None:
        return
    if wicket.poll() is None:
        wicket.send_signal(signal.SIGTERM)
        try:
            wicket.wait(30)
        except subprocess.TimeoutExpired:
            wicket.kill()
    sh(f'stop_nginx_of "{log_path}"')
