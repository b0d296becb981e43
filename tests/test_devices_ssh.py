"""The SSH transport against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): devices check,
remote benchmarks of ONNX Runtime fp32 and int8 artifacts, and every failure as one line, exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeport import load_config, run
from edgeport.cli import app
import edgeport
from tests import sshd
from tests.conftest import write_config

pytestmark = [pytest.mark.ssh, pytest.mark.onnxruntime]

if not Path(sshd.SSHD).exists() or not shutil.which("ssh"):
    pytest.skip("OpenSSH server/client not installed (make test installs openssh-server)", allow_module_level=True)

BENCH_FIELDS = ("device", "runtime", "runtime_version", "threads", "iterations", "warmup", "batch", "min_ms", "p50_ms",
                "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s", "load_ms", "first_ms", "peak_rss_mb",
                "model_size_bytes")
FACTS = ("arch", "cpu", "cores", "os", "python", "numpy")

cli = CliRunner()


def invoke(*args):
    result = cli.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip()


def error_line(output: str) -> str:
    """The one `error:` line; the test fails if there is none or more than one."""
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, _ = sshd.start(tmp_path_factory.mktemp("sshd"))
    yield srv
    sshd.stop(srv)


def devices_dir(tmp_path: Path, server: sshd.Server, name: str = "box", **fields) -> Path:
    folder = tmp_path / "devices"
    folder.mkdir(exist_ok=True)
    fields.setdefault("python", sys.executable)
    fields.setdefault("workdir", str(tmp_path / "remote-work"))
    fields.setdefault("options", sshd.CLIENT_OPTIONS)
    (folder / f"{name}.toml").write_text(server.profile(name, **fields))
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, model_cache):
    """ONNX Runtime fp32 and int8 artifacts of the digits CNN."""
    folder = tmp_path_factory.mktemp("ssh-artifacts")
    built = edgeport.export(load_config(write_config(folder)))
    return {a.precision: a.root for a in built}


def accepted_logins(server: sshd.Server) -> int:
    return (server.folder / "sshd.log").read_text().count("Accepted publickey")


def test_devices_check_reports_the_device(tmp_path, server):
    folder = devices_dir(tmp_path, server, runtimes=["onnxruntime"], arch=os.uname().machine)
    code, output = invoke("devices", "check", "box", "--devices-dir", folder, "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["facts"]["arch"] == os.uname().machine
    assert report["facts"]["cores"] >= 1 and report["facts"]["python"] == sys.version.split()[0]
    assert re.match(r"\d+\.\d+", report["facts"]["numpy"])
    assert report["runtimes"]["onnxruntime"]["version"].count(".") == 2
    assert report["missing"] == [] and report["problem"] is None


def test_run_benchmarks_ort_fp32_and_int8_over_ssh(tmp_path, server, model_cache):
    """The run config's [[bench.devices]] measures both artifacts on the SSH device, verifies them
    there on held-out digits, reuses one SSH connection, and removes what it pushed."""
    folder = devices_dir(tmp_path, server, runtimes=["onnxruntime"])
    before = accepted_logins(server)
    config = write_config(tmp_path, f'[devices]\ndir = "{folder}"\n\n[[bench.devices]]\nname = "box"\n',
                          bench="[bench]\niterations = 20\nmin_seconds = 0.0\nwarmup = 2\nthreads = 1\n"
                                "device_verify_samples = 60\n")
    result = run(load_config(config))
    report = json.loads((result.run_dir / "report.json").read_text())
    assert {a["precision"] for a in report["artifacts"]} == {"fp32", "int8"}
    for a in report["artifacts"]:
        (bench,) = a["bench"]
        missing = [k for k in BENCH_FIELDS if bench.get(k) is None]
        assert not missing, missing
        assert bench["device"] == "box" and bench["runtime"] == "onnxruntime" and bench["iterations"] >= 20
        assert bench["min_ms"] <= bench["p50_ms"] <= bench["p90_ms"] <= bench["p99_ms"]
        assert all(bench["device_facts"].get(k) for k in FACTS), bench["device_facts"]
        assert {"governor", "temperature_c"} <= set(bench["device_facts"])
        on_device = bench["device_verify"]
        assert on_device["samples"] == 60 and on_device["passed"]
        assert on_device["cosine"] > (0.9999 if a["precision"] == "fp32" else 0.99)
    assert accepted_logins(server) - before == 1  # ControlMaster: one handshake for the whole run
    assert not list((tmp_path / "remote-work").glob("job-*"))  # what was pushed is removed
    md = (result.run_dir / "report.md").read_text()
    assert "| onnxruntime | int8 |  | box |" in md


def test_bench_command_on_two_devices_one_table(tmp_path, server, artifacts):
    folder = devices_dir(tmp_path, server)
    out = tmp_path / "bench.json"
    code, output = invoke("bench", artifacts["fp32"], artifacts["int8"], "--device", "box", "--device", "local",
                          "--devices-dir", folder, "--iterations", 10, "--min-seconds", 0, "--warmup", 1,
                          "--threads", 1, "--out", out)
    assert code == 0, output
    rows = json.loads(out.read_text())
    assert [(r["device"], Path(r["artifact"]).name) for r in rows] == [
        ("box", "onnxruntime-fp32"), ("box", "onnxruntime-int8"),
        ("local", "onnxruntime-fp32"), ("local", "onnxruntime-int8")]
    assert "box" in output and "local" in output  # one table, a device column


def test_unreachable_host_fails_fast(tmp_path, server):
    closed = sshd.free_port()  # nothing listens here
    folder = devices_dir(tmp_path, server, port=closed, connect_timeout=3)
    started = time.monotonic()
    code, output = invoke("devices", "check", "box", "--devices-dir", folder)
    assert code == 2
    assert "cannot connect to" in error_line(output) and "refused" in output
    assert time.monotonic() - started < 10


def test_silent_host_returns_within_the_connect_timeout(tmp_path, server):
    """A host that accepts TCP but never speaks SSH: bounded by connect_timeout, not a hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        folder = devices_dir(tmp_path, server, port=silent.getsockname()[1], connect_timeout=2)
        started = time.monotonic()
        code, output = invoke("devices", "check", "box", "--devices-dir", folder)
    assert code == 2 and "cannot connect to" in error_line(output)
    assert time.monotonic() - started < 2 + 8


def test_wrong_key_is_refused(tmp_path, server):
    sshd.keygen(tmp_path / "other_key")
    folder = devices_dir(tmp_path, server, identity_file=str(tmp_path / "other_key"))
    code, output = invoke("devices", "check", "box", "--devices-dir", folder)
    assert code == 2
    line = error_line(output)
    assert "cannot connect to" in line and "Permission denied" in line


@pytest.fixture
def python_without_onnxruntime(tmp_path):
    """A real Python environment that has numpy but not onnxruntime: a bare venv whose .pth
    file adds a folder holding only a link to this environment's numpy."""
    import subprocess

    import numpy

    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    only_numpy = tmp_path / "only-numpy"
    only_numpy.mkdir()
    (only_numpy / "numpy").symlink_to(Path(numpy.__file__).parent)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "only_numpy.pth").write_text(str(only_numpy) + "\n")
    return venv / "bin" / "python"


def test_runtime_missing_on_the_device_names_the_pip_line(tmp_path, server, artifacts, python_without_onnxruntime):
    folder = devices_dir(tmp_path, server, python=str(python_without_onnxruntime), runtimes=["onnxruntime"])
    code, output = invoke("bench", artifacts["fp32"], "--device", "box", "--devices-dir", folder, "--iterations", 5,
                          "--min-seconds", 0, "--out", tmp_path / "b.json")
    assert code == 2
    line = error_line(output)
    assert "onnxruntime is not installed there" in line
    assert f"{python_without_onnxruntime} -m pip install onnxruntime==" in line
    code, output = invoke("devices", "check", "box", "--devices-dir", folder)
    assert code == 2 and "box lacks onnxruntime" in error_line(output) and "pip install onnxruntime==" in output


def runner_pids(marker: str) -> list[int]:
    """Processes running edgeport's runner from a job folder under `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1].endswith(b"/runner.py") and marker.encode() in argv[1]:
            found.append(int(pid))
    return found


def test_runner_killed_mid_run_keeps_what_was_measured(tmp_path, server, artifacts):
    """The second artifact's runner is killed (SIGKILL) on the device while it measures."""
    work = tmp_path / "killwork"
    folder = devices_dir(tmp_path, server, workdir=str(work))
    out = tmp_path / "bench.json"

    def kill_second_runner():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not out.exists():
            time.sleep(0.05)
        while time.monotonic() < deadline:
            pids = runner_pids(str(work))
            if pids:
                time.sleep(0.5)  # it is measuring now
                for pid in pids:
                    os.kill(pid, 9)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_second_runner)
    killer.start()
    code, output = invoke("bench", artifacts["fp32"], artifacts["int8"], "--device", "box", "--devices-dir", folder,
                          "--iterations", 10, "--min-seconds", 4, "--warmup", 1, "--threads", 1, "--out", out)
    killer.join()
    assert code == 2, output
    line = error_line(output)
    assert "killed by a signal while measuring onnxruntime/int8" in line
    assert f"1 result(s) already measured are kept in {out}" in line
    kept = json.loads(out.read_text())
    assert len(kept) == 1 and kept[0]["p50_ms"] > 0 and Path(kept[0]["artifact"]).name == "onnxruntime-fp32"
    assert not list(work.glob("job-*"))  # cleaned up even after the kill


def test_profile_typo_suggests_the_key(tmp_path, server):
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "box.toml").write_text('transport = "ssh"\nhots = "127.0.0.1"\n')
    code, output = invoke("devices", "check", "box", "--devices-dir", folder)
    assert code == 2
    assert 'unknown key \'hots\' (did you mean "host"?)' in error_line(output)
    (folder / "box.toml").write_text('transport = "ssh"\nhost = "127.0.0.1"\n')
    code, output = invoke("devices", "check", "bx", "--devices-dir", folder)
    assert code == 2 and 'unknown device \'bx\' (did you mean "box"?)' in error_line(output)


@pytest.mark.parametrize("transport", ["ssh", "local"])
def test_shell_metacharacters_in_a_profile_are_data(tmp_path, server, artifacts, transport):
    """A work dir of `...; touch PWNED` is a folder name on the device, never a command."""
    pwned = tmp_path / "pwned"
    workdir = f"{tmp_path}/work; touch {pwned}; rm -rf ~/nothing-here"
    if transport == "ssh":
        folder = devices_dir(tmp_path, server, workdir=workdir)
    else:
        folder = tmp_path / "devices"
        folder.mkdir()
        (folder / "box.toml").write_text(f'transport = "local"\nworkdir = {json.dumps(workdir)}\n')
    code, output = invoke("bench", artifacts["fp32"], "--device", "box", "--devices-dir", folder, "--iterations", 5,
                          "--min-seconds", 0, "--out", tmp_path / "b.json")
    assert code == 0, output
    assert not pwned.exists()
    assert Path(workdir).is_dir()  # the literal name, semicolons and all


def test_ssh_alias_from_an_ssh_config(tmp_path, server, artifacts):
    """`ssh_alias` takes host, port, user and key from an ssh_config file, as from ~/.ssh/config."""
    config = tmp_path / "ssh_config"
    config.write_text(f"Host my-pi\n  HostName 127.0.0.1\n  Port {server.port}\n  User {server.user}\n"
                      f"  IdentityFile {server.key}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                      "  LogLevel ERROR\n")
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "pi.toml").write_text(f'transport = "ssh"\nssh_alias = "my-pi"\nssh_config = "{config}"\n'
                                    f'python = "{sys.executable}"\n')
    code, output = invoke("devices", "check", "pi", "--devices-dir", folder, "--json")
    assert code == 0, output
    assert json.loads(output)["address"] == "ssh alias my-pi"
