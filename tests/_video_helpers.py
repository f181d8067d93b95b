"""Shared by the video folder kinds' tests: a command refused in one line that writes nothing."""
from diffkit.cli import main


def refused_in_one_line(capsys, tmp_path, command: str, folder, args: list, message: str) -> None:
    """``diffkit COMMAND --checkpoint FOLDER --prompt "a cat" ... ARGS`` run in ``tmp_path`` (video: ``--individual
    new/each``, sample / edit: ``--out new/x.png``) exits 2 with one line holding ``message``, and ``tmp_path`` gains
    no file or folder other than the ones it held."""
    before = set(tmp_path.iterdir())
    out = ["--individual", "new/each"] if command == "video" else ["--out", "new/x.png"]
    code = main([command, "--checkpoint", str(folder), "--prompt", "a cat", *out, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert set(tmp_path.iterdir()) == before
