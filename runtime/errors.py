"""The single exception type of the project."""


class OmamaError(Exception):
    """An error a user can act on: the CLIs print its message as one line and exit 1."""


def no_fastsam_error(root: object) -> OmamaError:
    """The error for artifacts exported without FastSAM when a run needs candidates."""
    return OmamaError(
        f"the artifacts in {root} hold no FastSAM model (exported with --no-fastsam-export): "
        "give precomputed candidate masks with --candidates"
    )
