"""The real Google Cloud Firestore emulator (from the Google Cloud CLI), started on a free port.

It is a Java program: we start the jar with ``java`` ourselves and kill that process, so no
emulator is ever left behind by a wrapper script. Missing emulator = a loud failure, never a skip.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.processes import free_port, wait_for_port

CANDIDATES = [
    os.environ.get("FIRESTORE_EMULATOR_JAR", ""),
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    "/usr/share/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
    "/opt/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
]
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"


def find_jar() -> str:
    for path in CANDIDATES:
        if path and os.path.exists(path):
            return path
    raise RuntimeError(
        "The Firestore emulator is not installed. Install the Google Cloud CLI package "
        "'google-cloud-cli-firestore-emulator' (and a Java runtime), or set FIRESTORE_EMULATOR_JAR."
    )


class FirestoreEmulator:
    def __init__(self, project: str = "chat-test") -> None:
        self.project = project
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="chat-firestore-")) / "emulator.log"
        atexit.register(shutil.rmtree, self.log.parent, ignore_errors=True)  # restarts reuse it

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FirestoreEmulator:
        java = shutil.which("java")
        if not java:
            raise RuntimeError("java is needed to run the Firestore emulator (apt-get install default-jre-headless)")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    java,
                    "-Duser.language=en",
                    "-cp",
                    find_jar(),
                    MAIN_CLASS,
                    "start",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, 60, self.proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Firestore emulator not ready; see {self.log}")
            time.sleep(0.2)

    def wipe(self) -> None:
        url = f"http://{self.host}/emulator/v1/projects/{self.project}/databases/(default)/documents"
        req = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port (data is gone, as with a real outage of the emulator)."""
        self.stop()
        self.start()
