"""PyTorch's many-line loader messages still reach the user as one error line."""

from __future__ import annotations

from runtime.clikit import new_app, run_app


def test_a_pickle_refused_by_torch_is_one_line(tmp_path, capsys):
    import argparse
    import pickle

    from omama_train.models.matcher import load_matcher

    weights = tmp_path / "w.pt"
    weights.write_bytes(pickle.dumps({"x": argparse.Namespace(a=1)}))
    app = new_app("test app")

    @app.command("load")
    def load() -> None:
        """Load a matcher."""
        load_matcher(weights)

    assert run_app(app, ["load"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read {weights}"), lines
