"""kvwire.client.token_file on real files: what kvwire-cli and kvwire bench read with --token-file."""

import pytest

from kvwire.client.token_file import MAX_TOKEN_FILE_BYTES, read_token_file


def test_the_token_is_the_file_without_the_whitespace_around_it(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"  s3cr3t-t0ken\n")
    assert read_token_file(path) == "s3cr3t-t0ken"


@pytest.mark.parametrize("content, message", [
    (b"x" * (MAX_TOKEN_FILE_BYTES + 1), f"is larger than {MAX_TOKEN_FILE_BYTES} bytes, too large for a token file"),
    (b"tok\xffen", "holds a byte that is not UTF-8 text, at offset 3"),
    (b" \n\t\n", "is empty"),
])
def test_a_file_that_holds_no_token_is_refused_naming_it(tmp_path, content, message):
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(ValueError) as refused:
        read_token_file(path)
    assert str(refused.value) == f"{path} {message}"


def test_a_token_of_exactly_the_limit_is_read(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"t" * MAX_TOKEN_FILE_BYTES)
    assert len(read_token_file(path)) == MAX_TOKEN_FILE_BYTES


def test_a_file_that_cannot_be_read_says_why(tmp_path):
    with pytest.raises(ValueError, match=f"cannot read {tmp_path / 'none'}: No such file or directory"):
        read_token_file(tmp_path / "none")
    with pytest.raises(ValueError, match="Is a directory"):
        read_token_file(tmp_path)


def test_a_byte_order_mark_is_not_part_of_the_token(tmp_path):
    """An editor saving UTF-8 with a BOM: the token was sent with it, and refused."""
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbfs3cr3t-t0ken\n")
    assert read_token_file(path) == "s3cr3t-t0ken"


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    """kvwire-cli --token-file FIFO with no writer hung for ever."""
    import os

    path = tmp_path / "token"
    os.mkfifo(path)
    with pytest.raises(ValueError, match="is a named pipe, not read"):
        read_token_file(path)


def test_a_pipe_from_the_shell_is_read(tmp_path):
    """``--token-file <(pass show kvwire)`` and ``--token-file /dev/stdin`` keep a token off
    the disk and out of argv; refusing every pipe refused them (a reviewer's finding)."""
    import subprocess
    import sys

    reader = tmp_path / "read_token.py"
    reader.write_text("import sys\nfrom kvwire.client.token_file import read_token_file\nprint(read_token_file(sys.argv[1]))\n")
    from_stdin = subprocess.run([sys.executable, str(reader), "/dev/stdin"], input="s3cr3t-t0ken\n",
                                capture_output=True, text=True, timeout=30)
    substituted = subprocess.run(["bash", "-c", f"{sys.executable} {reader} <(echo s3cr3t-t0ken)"],
                                 capture_output=True, text=True, timeout=30)
    for result in (from_stdin, substituted):
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "s3cr3t-t0ken"
