"""Nothing lost, nothing left behind: ``omama-run video --overlay`` killed at any instant, or
stopped by a full disk, resumes to the very results and overlay of an uninterrupted run.

Kills are subprocesses dying at a named instant (:mod:`tests.runtime.runs.faults`) or a real
SIGKILL; a full disk is a small tmpfs (where user namespaces allow mounting one), a file size
limit (RLIMIT_FSIZE: the kernel's EFBIG) or an encoder whose writes fail with ENOSPC. Every
resume is compared with a straight run of the same command: results.json, predictions.jsonl
and run_state.json byte for byte, summary.json value for value (timings and this run's counts
aside), overlay.mp4 decoded frame by frame; no hidden temporary file may be left.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the shared assets are exported with torch

import av  # noqa: E402

from runtime.video import VideoReader  # noqa: E402
from tests.kill_instants import sigkill_after
from tests.runtime.assets import EGO  # noqa: E402
from tests.runtime.runs.cli import error_line, omama_run, video_args  # noqa: E402
from tests.runtime.runs.test_video import _reencode_with_a_broken_frame  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
FRAMES = 6  # frames of the synthetic take's videos
# summary.json values that legitimately differ between a resumed and a straight run
VOLATILE = {"wall_s", "fps_inferred", "fps_end_to_end", "latency_ms", "peak_rss_mb",
            "resumed_from_frame", "frames_this_run", "frames_inferred_this_run",
            "results", "details", "overlay"}  # fmt: skip


def run_args(assets, out: Path, *extra) -> list[str]:
    """The command under test: ONNX Runtime, an overlay, a checkpoint every 2 frames."""
    args = video_args(assets, out, "onnxruntime", "--overlay", "--checkpoint-every-frames", "2")
    return [str(a) for a in [*args, *extra]]


def start(args: list[str], *specs: str, **popen) -> subprocess.Popen:
    """``omama-run ARGS`` in a subprocess that dies at the instants ``specs``."""
    cmd = [sys.executable, "-m", "tests.runtime.runs.faults", *specs, "--", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True, **popen)


def run_killed(args: list[str], *specs: str) -> None:
    proc = start(args, *specs)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 137, f"{specs} was never reached (exit {proc.returncode}): {err}"


@pytest.fixture(scope="module")
def straight(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    from runtime.cli import app
    from runtime.clikit import run_app

    assert run_app(app, run_args(assets, out), prog_name="omama-run") == 0
    return out


def decoded(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return [frame for _, frame in reader.frames()]


def leftovers(out: Path) -> list[str]:
    """Hidden files other than the folder's lock (temporary files of atomic writes)."""
    return sorted(p.name for p in out.glob(".*") if p.name != ".omama.lock")


def assert_same_run(expected: Path, got: Path, frames_expected: int = FRAMES) -> None:
    for name in ("results.json", "predictions.jsonl", "run_state.json"):
        assert (got / name).read_bytes() == (expected / name).read_bytes(), name
    summaries = [json.loads((d / "summary.json").read_text()) for d in (got, expected)]
    ours, theirs = ({k: v for k, v in s.items() if k not in VOLATILE} for s in summaries)
    assert ours == theirs
    frames, reference = decoded(got / "overlay.mp4"), decoded(expected / "overlay.mp4")
    assert len(frames) == len(reference) == frames_expected
    for i, (a, b) in enumerate(zip(frames, reference, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"overlay frame {i}")
    assert leftovers(got) == []
    assert sorted(p.name for p in got.glob("overlay*")) == ["overlay.mp4"]


def assert_nothing_half_done(out: Path) -> None:
    """What a failed or killed run may leave: an overlay only whole, a state never complete
    without its overlay."""
    if (out / "overlay.mp4").exists():
        assert len(decoded(out / "overlay.mp4")) == FRAMES
    elif (out / "run_state.json").exists():
        assert not json.loads((out / "run_state.json").read_text())["complete"]


# ----------------------------------------------------------------------------- kills

INSTANTS = {
    "mid-run, overlay half encoded": ["overlay:4"],
    "results written, state not yet": [r"replace:^results\.json$:2:after"],
    "overlay encoded, not in place": [r"replace:^overlay\.mp4$:1:before"],
    "overlay in place, final state not": [r"replace:^overlay\.mp4$:1:after"],
    "state complete, summary not written": [r"replace:^summary\.json$:1:before"],
}


@pytest.mark.parametrize("instant", list(INSTANTS))
def test_kill_at_an_instant_then_resume_matches_a_straight_run(
    instant, assets, straight, tmp_path, capsys
):
    out = tmp_path / "run"
    run_killed(run_args(assets, out), *INSTANTS[instant])
    assert_nothing_half_done(out)
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def test_killed_again_while_the_resume_rebuilds_the_overlay(assets, straight, tmp_path, capsys):
    out = tmp_path / "run"
    run_killed(run_args(assets, out), "overlay:4")  # frames 0-1 checkpointed, frame 2 lost
    run_killed(run_args(assets, out, "--resume"), "overlay:2")  # re-rendering frame 1
    assert_nothing_half_done(out)
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def test_a_frame_that_did_not_decode_stays_reported_after_a_kill(assets, tmp_path, capsys):
    """Frame 2 of the destination is garbage; the run is killed after the checkpoint of
    frames 3-4, which must already count it (the resume starts at frame 5)."""
    broken = _reencode_with_a_broken_frame(assets.video(EGO), tmp_path / f"{EGO}.avi", 2)

    def with_broken(out: Path, *extra: str) -> list[str]:
        args = run_args(assets, out, *extra)
        args[2] = str(broken)
        return args

    code, _, err = omama_run(capsys, *with_broken(tmp_path / "straight"))
    assert code == 0, err
    out = tmp_path / "run"
    run_killed(with_broken(out), "overlay:5")  # frames 0, 1, 3, 4 recorded and checkpointed
    code, _, err = omama_run(capsys, *with_broken(out, "--resume"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [s["frame"] for s in summary["skipped_frames"]["listed"]] == [2]
    assert_same_run(tmp_path / "straight", out, FRAMES - 1)


def test_sigkill_at_a_random_instant_then_resume_matches(assets, straight, tmp_path, capsys):
    out = tmp_path / "run"
    sigkill_after(start(run_args(assets, out)), out / "predictions.jsonl", max_delay_s=0.6)
    assert_nothing_half_done(out)
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


# ----------------------------------------------------------------------------- full disks


class _FillingDisk:
    """An output container on a disk that fills up: its ``fail_at``-th packet, or (None) its
    close, which writes the index, fails with ENOSPC; a failed close leaves half a file."""

    def __init__(self, container, path: str, fail_at: int | None) -> None:
        self._container, self._path, self._fail_at = container, path, fail_at
        self._muxed = 0

    def _full(self) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def mux(self, packet) -> None:
        self._muxed += 1
        if self._muxed == self._fail_at:
            raise self._full()
        self._container.mux(packet)

    def close(self) -> None:
        self._container.close()
        if self._fail_at is None:
            os.truncate(self._path, os.path.getsize(self._path) // 2)
            raise self._full()

    def __getattr__(self, name):
        return getattr(self._container, name)


@pytest.mark.parametrize("fail_at", [3, None], ids=["while-encoding", "while-closing"])
def test_disk_full_in_the_overlay_stops_in_one_line_and_resume_completes(
    fail_at, assets, straight, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_open = av.open

    def filling_open(file, mode="r", **kwargs):
        container = real_open(file, mode, **kwargs)
        return _FillingDisk(container, str(file), fail_at) if mode == "w" else container

    monkeypatch.setattr(av, "open", filling_open)
    code, _, err = omama_run(capsys, *run_args(assets, out))
    assert code == 1
    line = error_line(err)
    assert "disk full while writing overlay.mp4" in line and "run again with --resume" in line, line
    assert not (out / "overlay.mp4").exists()
    assert not json.loads((out / "run_state.json").read_text())["complete"]
    assert leftovers(out) == []
    monkeypatch.setattr(av, "open", real_open)  # space was freed
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def _file_size_limit(limit_bytes: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG

    return limit


def test_file_size_limit_stops_the_overlay_in_one_line_and_resume_completes(
    assets, straight, tmp_path, capsys
):
    """60 KB: the results (23 KB) fit, the overlay (~110 KB) does not."""
    out = tmp_path / "run"
    proc = start(run_args(assets, out), preexec_fn=_file_size_limit(60_000))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    line = error_line(err)
    assert "while writing overlay.mp4" in line and "File too large" in line, line
    assert "run again with --resume" in line
    assert not (out / "overlay.mp4").exists() and leftovers(out) == []
    assert not json.loads((out / "run_state.json").read_text())["complete"]
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def _can_mount_tmpfs(where: Path) -> str | None:
    """Why a small tmpfs cannot be mounted here without root (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                            str(where)], capture_output=True, text=True)  # fmt: skip
    return None if probe.returncode == 0 else f"unshare -rm mount: {probe.stderr.strip()}"


def test_disk_full_on_a_small_filesystem_then_resume_after_freeing_space(
    assets, straight, tmp_path
):
    """A 64 KB tmpfs in a private mount namespace: the run fills it, space is freed (the
    tmpfs grows to 16 MB) and the resume completes; the folder is copied out at each step
    (the tmpfs dies with the namespace)."""
    disk, full, freed = tmp_path / "disk", tmp_path / "full", tmp_path / "freed"
    for folder in (disk, full, freed):
        folder.mkdir()
    problem = _can_mount_tmpfs(disk)
    if problem:
        pytest.skip(f"cannot make a small filesystem without root here ({problem})")
    command = [sys.executable, "-m", "tests.runtime.runs.faults", "--"]
    run = shlex.join(command + run_args(assets, disk))
    q = {name: shlex.quote(str(tmp_path / name)) for name in ("err1", "err2", "disk")}
    script = f"""
        mount -t tmpfs -o size=64k tmpfs {q["disk"]}
        {run} 2> {q["err1"]}; echo $? > {shlex.quote(str(tmp_path / "rc1"))}
        cp -a {q["disk"]}/. {shlex.quote(str(full))}/
        mount -o remount,size=16m tmpfs {q["disk"]}
        {run} --resume 2> {q["err2"]}; echo $? > {shlex.quote(str(tmp_path / "rc2"))}
        cp -a {q["disk"]}/. {shlex.quote(str(freed))}/
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=ENV, check=True,
                   timeout=240, stdout=subprocess.DEVNULL)  # fmt: skip
    err1 = (tmp_path / "err1").read_text()
    assert (tmp_path / "rc1").read_text().strip() == "1", err1
    line = error_line(err1)
    assert "disk full while writing" in line and "run again with --resume" in line, line
    assert leftovers(full) == [] and not (full / "overlay.mp4").exists()
    assert_nothing_half_done(full)
    assert (tmp_path / "rc2").read_text().strip() == "0", (tmp_path / "err2").read_text()
    assert_same_run(straight, freed)


# ----------------------------------------------------------------------------- resumes


def test_max_frames_then_resume_gives_one_overlay_of_every_frame(
    assets, straight, tmp_path, capsys
):
    out = tmp_path / "run"
    code, _, err = omama_run(capsys, *run_args(assets, out, "--max-frames", "3"))
    assert code == 0, err
    assert len(decoded(out / "overlay.mp4")) == 3
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def test_resume_with_overlay_adds_it_to_a_complete_run(assets, straight, tmp_path, capsys):
    out = tmp_path / "run"
    without = [a for a in run_args(assets, out) if a != "--overlay"]
    code, _, err = omama_run(capsys, *without)
    assert code == 0 and not (out / "overlay.mp4").exists(), err
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


@pytest.mark.parametrize(
    ("field", "value"),
    [("counts", []), ("next_frame", "2"), ("query_skips", {"count": "many"})],
)
def test_resume_refuses_a_state_it_cannot_read_in_one_line(
    field, value, assets, straight, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    state = json.loads((out / "run_state.json").read_text())
    state.update({"complete": False, field: value})
    (out / "run_state.json").write_text(json.dumps(state))
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 1
    line = error_line(err)
    assert "run_state.json" in line and field in line and "without --resume" in line, line


def test_disk_full_inside_a_frame_keeps_the_last_checkpoint(
    assets, straight, tmp_path, capsys, monkeypatch
):
    """The encoder fails on frame 4 (annotated), after its predictions and counts were
    recorded: saving them with a state that does not point past frame 4 made the resume
    count them twice."""
    from runtime.video import VideoWriter

    out, real_write, calls = tmp_path / "run", VideoWriter.write, [0]

    def failing_write(self, frame_rgb):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return real_write(self, frame_rgb)

    monkeypatch.setattr(VideoWriter, "write", failing_write)
    code, _, err = omama_run(capsys, *run_args(assets, out))
    assert code == 1 and "disk full while writing overlay.mp4" in error_line(err)
    monkeypatch.setattr(VideoWriter, "write", real_write)
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)


def test_an_error_of_the_run_itself_drops_the_overlay_and_resumes(
    assets, straight, tmp_path, capsys, monkeypatch
):
    """Inference failing on frame 3 (not a write): the half-encoded overlay used to be left to
    the encoder thread, its temporary video behind; now it is dropped like after a write error."""
    from runtime.runs import video as video_run

    out, real_frame, calls = tmp_path / "run", video_run._FrameMatcher.frame, [0]

    def failing_frame(self, pair, keep_frames):
        calls[0] += 1
        if calls[0] == 4:
            raise video_run.OmamaError("inference failed on this frame")
        return real_frame(self, pair, keep_frames)

    monkeypatch.setattr(video_run._FrameMatcher, "frame", failing_frame)
    code, _, err = omama_run(capsys, *run_args(assets, out))
    assert code == 1 and "inference failed on this frame" in error_line(err)
    assert leftovers(out) == [] and not list(out.glob("overlay*"))
    monkeypatch.setattr(video_run._FrameMatcher, "frame", real_frame)
    code, _, err = omama_run(capsys, *run_args(assets, out, "--resume"))
    assert code == 0, err
    assert_same_run(straight, out)
