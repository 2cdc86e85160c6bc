"""The two exports most export tests read (built once per test session)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from export.pipeline import export_artifacts
from omama_train.models.backbones import BACKBONES
from runtime.clikit import new_app, run_app
from tests.export.helpers import GRIDS, SMALL, small_config

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def exo2ego(tmp_path_factory):
    """exo2ego, --fp16, masks-input matcher, FastSAM stand-in, 200 random candidate sets."""
    out = tmp_path_factory.mktemp("exo2ego") / "artifacts"
    lines: list[str] = []
    config = small_config(out, direction="exo2ego", fp16=True, matcher_input="masks")
    result = export_artifacts(config, echo=lines.append, progress=False)
    return result, lines, out


@pytest.fixture(scope="session")
def ego2exo(tmp_path_factory):
    """ego2exo through the CLI: fp32, matcher input chosen by measurement, no FastSAM."""
    out = tmp_path_factory.mktemp("ego2exo") / "artifacts"
    from export.cli import register

    app = new_app("test")
    register(app)
    with pytest.MonkeyPatch.context() as mp:
        # The CLI's random-init configuration, made small: 1-block ViT-S and tiny grids.
        mp.setitem(BACKBONES, "dinov2_vits14_reg", SMALL)
        mp.setattr("export.config.RANDOM_GRIDS", dict(GRIDS))
        argv = [
            "export",
            "--random-init",
            "--direction",
            "ego2exo",
            "--out",
            str(out),
            "--no-fastsam-export",
            "--parity-sets",
            "20",
        ]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_app(app, argv)
    return code, stdout.getvalue(), stderr.getvalue(), out
