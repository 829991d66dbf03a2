"""wsbus: joint weakly- and semi-supervised Faster R-CNN for breast ultrasound (Shin et al., TMI 2019).

The book in ``book/`` teaches each module; every public docstring names its chapter.
"""
__version__ = "0.2.0"


def _code_state():
    """The git state of the source wsbus is imported from, read once when it is imported (so a long run records
    the code that runs, not a later state of the files): see :func:`wsbus.provenance.git_commit`."""
    import hashlib
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    try:
        def git(*args):
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=20,
                                  check=True).stdout

        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != here:
            return None  # wsbus sits inside some other repository (e.g. site-packages under a user's repo)
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "wsbus")
        untracked = sorted(f for f in git("ls-files", "--others", "--exclude-standard", "--", "wsbus").split()
                           if not f.endswith((".pyc", ".pyo")))
    except (OSError, subprocess.SubprocessError):
        return None
    if not diff and not untracked:
        return {"commit": commit, "dirty": False, "changes": None}
    digest = hashlib.sha256(diff.encode())
    for name in untracked:
        digest.update(name.encode())
        try:
            digest.update((here / name).read_bytes())
        except OSError:
            pass
    return {"commit": commit, "dirty": True, "changes": digest.hexdigest()}


#: The git state of this source at import (None outside a git checkout); :mod:`wsbus.provenance` reports it.
CODE_STATE = _code_state()
