"""The image builder's pieces on small trees: deterministic layers, lock parsing, links, pruning, fingerprints."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import pytest

from ocibuild import debs, hami_image, inputs, layer, rootfs


def tree(root: Path, order: list[str], mtime: int) -> Path:
    """A small tree created in the given order with the given file times."""
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {name}\n")
        path.chmod(0o644)
        os.utime(path, (mtime, mtime))
    (root / "a").chmod(0o755)
    os.symlink("a/x.txt", root / "link")
    return root


def test_layer_bytes_do_not_depend_on_creation_order_or_file_times(tmp_path: Path) -> None:
    one = tree(tmp_path / "one", ["a/x.txt", "b.txt", "a/y.txt"], 1000)
    two = tree(tmp_path / "two", ["b.txt", "a/y.txt", "a/x.txt"], 2_000_000)
    l1 = layer.write_layer(one, tmp_path / "one.tar.gz", mtime=42)
    l2 = layer.write_layer(two, tmp_path / "two.tar.gz", mtime=42)
    assert (l1.digest, l1.diff_id, l1.size) == (l2.digest, l2.diff_id, l2.size)
    assert l1.path.read_bytes() == l2.path.read_bytes()
    with tarfile.open(l1.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a", "a/x.txt", "a/y.txt", "b.txt", "link"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(42, 0, 0, "", "")}
    assert members[-1].issym() and members[-1].linkname == "a/x.txt"
    with gzip.open(l1.path) as gz:
        assert len(gz.read()) == l1.uncompressed_size


def test_layer_mtime_and_owners_are_part_of_the_bytes(tmp_path: Path) -> None:
    root = tree(tmp_path / "t", ["a/x.txt"], 0)
    base = layer.write_layer(root, tmp_path / "0.tar.gz", mtime=0)
    later = layer.write_layer(root, tmp_path / "1.tar.gz", mtime=1)
    owned = layer.write_layer(root, tmp_path / "2.tar.gz", mtime=0, owners={"a": (7, 8)})
    assert len({base.digest, later.digest, owned.digest}) == 3
    with tarfile.open(owned.path) as tar:
        assert (tar.getmember("a").uid, tar.getmember("a").gid) == (7, 8)


def test_hard_links_become_link_entries(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "first").write_bytes(b"x" * 100)
    os.link(root / "first", root / "second")
    written = layer.write_layer(root, tmp_path / "l.tar.gz", mtime=0)
    with tarfile.open(written.path) as tar:
        second = tar.getmember("second")
    assert second.islnk() and second.linkname == "first"


def test_a_fifo_is_refused_by_name(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(layer.LayerError, match=r"/t/pipe: not a file, directory or symlink"):
        layer.write_layer(root, tmp_path / "l.tar.gz", mtime=0)


def test_lock_lines_are_parsed_and_bad_ones_named(tmp_path: Path) -> None:
    lock = tmp_path / "debian.lock"
    sha = "a" * 64
    lock.write_text(f"# header\nzlib1g 1:1.2.13.dfsg-1+deb12u1 {sha}\n\nlibc6 2.36-9 {sha}  # why\n")
    parsed = debs.read_lock(lock)
    assert [(d.name, d.version) for d in parsed] == [
        ("zlib1g", "1:1.2.13.dfsg-1+deb12u1"),
        ("libc6", "2.36-9"),
    ]
    assert parsed[0].upstream_version == "1.2.13.dfsg"
    lock.write_text(f"libc6 2.36-9 {sha}\nlibssl3 3.0\n")
    with pytest.raises(
        debs.DebError, match=r"debian.lock:2: expected 'name version sha256', got 'libssl3 3.0'"
    ):
        debs.read_lock(lock)
    lock.write_text("# nothing\n")
    with pytest.raises(debs.DebError, match="no packages"):
        debs.read_lock(lock)


def test_write_lock_then_read_lock_round_trips(tmp_path: Path) -> None:
    pinned = [debs.LockedDeb("zlib1g", "1:1.2", "b" * 64), debs.LockedDeb("libc6", "2.36-9", "c" * 64)]
    lock = tmp_path / "debian.lock"
    debs.write_lock(lock, pinned, "line one\nline two")
    assert lock.read_text().startswith("# line one\n# line two\nlibc6 ")
    assert debs.read_lock(lock) == sorted(pinned, key=lambda d: d.name)


@pytest.mark.parametrize(
    ("member", "path"),
    [
        ("./lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libc.so.6"),
        ("./lib64/ld-linux-x86-64.so.2", "usr/lib64/ld-linux-x86-64.so.2"),
        ("./bin/true", "usr/bin/true"),
        ("./usr/lib/python3.11/os.py", "usr/lib/python3.11/os.py"),
        ("./etc/ld.so.conf.d/", "etc/ld.so.conf.d"),
        ("./libexec/x", "libexec/x"),
        ("./", ""),
    ],
)
def test_merged_usr_paths(member: str, path: str) -> None:
    assert debs.merged_usr_path(member) == path


@pytest.mark.parametrize(
    ("path", "dropped"),
    [
        ("usr/share/doc/libc6/copyright", True),
        ("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", True),
        ("usr/bin/python3.11", False),
        ("usr/bin/pydoc3.11", True),
        ("usr/lib/python3.11/sqlite3/__init__.py", True),
        ("usr/lib/python3.11/sqlite3x.py", False),
        ("usr/lib/python3.11/unittest/test/test_case.py", True),
        ("usr/lib/python3.11/unittest/mock.py", False),
        ("usr/lib/python3.11/lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so", True),
        ("usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", False),
        ("usr/lib/x86_64-linux-gnu/libssl.so.3", False),
    ],
)
def test_debian_pruning(path: str, dropped: bool) -> None:
    assert hami_image.dropped(path) is dropped


def test_links_resolve_across_layers_and_a_dangling_one_is_named(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    rootfs.make_dirs(lower, "usr/bin")
    (lower / "usr/bin/python3.11").write_text("")
    rootfs.merged_usr_links(lower)
    rootfs.make_dirs(upper, "opt/venv/bin")
    os.symlink("/bin/python3.11", upper / "opt/venv/bin/python3.11")  # through /bin -> usr/bin
    os.symlink("python3.11", upper / "opt/venv/bin/python")
    os.symlink("../../../usr/bin/python3.11", upper / "opt/venv/bin/rel")
    rootfs.check_links([lower, upper])
    os.symlink("/usr/bin/missing", upper / "opt/venv/bin/broken")
    with pytest.raises(
        rootfs.RootfsError, match=r"^/opt/venv/bin/broken: dangling symlink to '/usr/bin/missing'$"
    ):
        rootfs.check_links([lower, upper])


def test_base_files_give_a_nonroot_user_and_a_sticky_tmp(tmp_path: Path) -> None:
    rootfs.base_files(tmp_path)
    assert "nonroot:x:65532:65532:" in (tmp_path / "etc/passwd").read_text()
    assert "nonroot:x:65532:" in (tmp_path / "etc/group").read_text()
    assert (tmp_path / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_fingerprint_follows_file_contents_and_values(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("1")
    key = inputs.fingerprint([a], {"epoch": "0"})
    assert inputs.fingerprint([a, a], {"epoch": "0"}) == key
    assert inputs.fingerprint([a], {"epoch": "1"}) != key
    a.write_text("2")
    assert inputs.fingerprint([a], {"epoch": "0"}) != key
    archive = tmp_path / "img.tar"
    assert not inputs.up_to_date(archive, key)
    archive.write_bytes(b"")
    inputs.record(archive, key)
    assert inputs.up_to_date(archive, key)
    assert not inputs.up_to_date(archive, "other")
