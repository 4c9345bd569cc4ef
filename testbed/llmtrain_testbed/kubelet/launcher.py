"""Turns a fresh process into a pod's container, then execs the container's command.

Run as `python -I -S launcher.py SPEC.json` (stdlib only, single-threaded, so setns/unshare are safe). It joins the
pod's network namespace, unshares a private mount and UTS namespace, sets the pod's hostname, builds the
container's mounts, and execs. With `"join_pid"` it instead enters a running container's namespaces (exec probes).

A mount target that does not exist on the host (e.g. /etc/llmtrain, /dev/termination-log, /data) is made inside
the mount namespace only, so the host's directories never change:
- below an existing directory other than `/`: that directory is covered by an overlayfs whose lower layer is the
  directory itself and whose upper layer lives in the container's state directory; its submounts are bound back;
- directly below `/`: the container gets a new root, a tmpfs holding bind mounts of every entry of the host's
  `/` plus the new directory, and chroots into it (exec probes follow it through /proc/<pid>/root).
Only if overlayfs refuses is a directory created on the host; it is recorded in `host_created` for the kubelet
to remove.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {source} on {target}")


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


class MountBuilder:
    """Builds the container's view of the file system in its (already private) mount namespace."""

    def __init__(self, scratch: str) -> None:
        os.makedirs(scratch, exist_ok=True)
        self.scratch_path = os.path.realpath(scratch)
        # Through an fd, so later mounts (a private /tmp, the new root) cannot hide the scratch directory.
        self.scratch = f"/proc/self/fd/{os.open(scratch, os.O_PATH)}"
        self.overlaid: set[str] = set()
        self.host_created: list[str] = []
        self.chrooted = False

    def _overlay(self, ancestor: str) -> bool:
        index = len(self.overlaid)
        keep, upper, work = (os.path.join(self.scratch, f"{kind}-{index}") for kind in ("keep", "upper", "work"))
        for d in (keep, upper, work):
            os.makedirs(d, exist_ok=True)
        prefix = ancestor.rstrip("/") + "/"
        subs = sorted({m for m in _mount_points() if m.startswith(prefix)})
        top_subs = [m for m in subs if not any(m != o and m.startswith(o.rstrip("/") + "/") for o in subs)]
        try:
            _mount(ancestor, keep, None, MS_BIND | MS_REC)
            _mount("overlay", ancestor, "overlay", 0, f"lowerdir={keep},upperdir={upper},workdir={work}")
        except OSError as exc:
            print(f"launcher: cannot overlay {ancestor} ({exc}); creating mount points on the host", file=sys.stderr)
            return False
        for sub in top_subs:
            _mount(os.path.join(keep, sub[len(prefix) :]), sub, None, MS_BIND | MS_REC)
        self.overlaid.add(ancestor)
        return True

    def _new_root(self) -> None:
        """Chroot into a tmpfs that binds every entry of `/`, so new top-level directories stay private."""
        root = os.path.join(self.scratch, "root")
        os.makedirs(root, exist_ok=True)
        _mount("tmpfs", root, "tmpfs", 0, "mode=755")
        for name in os.listdir("/"):
            src, dst = "/" + name, os.path.join(root, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif os.path.isdir(src):
                os.mkdir(dst)
                _mount(src, dst, None, MS_BIND | MS_REC)
            else:
                open(dst, "w").close()
                _mount(src, dst, None, MS_BIND)
        # The recursive binds copied the new root into itself (it lives below /): detach that copy.
        nested = os.path.join(root, self.scratch_path.lstrip("/"), "root")
        if os.path.ismount(nested):
            _check(_libc.umount2(nested.encode(), MNT_DETACH), f"umount {nested}")
        os.chdir(root)
        os.chroot(".")
        os.chdir("/")
        self.chrooted = True

    def _covered(self, path: str) -> bool:
        return any(path == o or path.startswith(o + "/") for o in self.overlaid)

    def ensure_target(self, target: str, is_dir: bool) -> None:
        if os.path.lexists(target):
            return
        ancestor = _nearest_existing(os.path.dirname(target))
        if ancestor == "/":
            if not self.chrooted:
                self._new_root()
        elif not self._covered(ancestor) and not self._overlay(ancestor):
            self._record_host_dirs(target if is_dir else os.path.dirname(target))
        if is_dir:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "a"):
                pass

    def _record_host_dirs(self, path: str) -> None:
        missing = []
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        self.host_created.extend(missing)

    def bind(self, source: str, target: str, read_only: bool, is_dir: bool) -> None:
        target = os.path.realpath(target)
        self.ensure_target(target, is_dir)
        _mount(source, target, None, MS_BIND | MS_REC)
        if read_only:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def _same_dir(path: str, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.stat(f"/proc/self/fd/{fd}"))
    except OSError:
        return False


def _exec(spec: dict) -> None:
    argv = spec["argv"]
    env = spec["env"]
    try:
        os.chdir(spec.get("working_dir") or "/")
    except OSError as exc:
        print(f"launcher: workingDir {spec.get('working_dir')!r}: {exc}", file=sys.stderr)
        os._exit(128)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        print(f"launcher: cannot run {argv[0]!r}: {exc}", file=sys.stderr)
        os._exit(128)  # like a runtime's StartError


def start_container(spec: dict) -> None:
    _setns(spec["netns_path"], CLONE_NEWNET)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    socket.sethostname(spec["hostname"])
    with open(spec["mnt_ns_file"], "w") as f:
        f.write(os.readlink("/proc/self/ns/mnt"))
    builder = MountBuilder(spec["scratch_dir"])
    # Open every source (and the record file) first: a mount such as the pod's private /tmp, or the new root,
    # must not hide a later mount's source.
    record = os.open(spec["host_created_file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sources = [(os.open(m["source"], os.O_PATH), os.path.isdir(m["source"])) for m in spec["mounts"]]
    image = [(p, os.open(p, os.O_PATH)) for p in spec.get("image_paths", []) if os.path.isdir(p)]
    try:
        for m, (fd, is_dir) in zip(spec["mounts"], sources, strict=True):
            builder.bind(f"/proc/self/fd/{fd}", m["target"], m.get("read_only", False), is_dir)
        # The "image" (repo, venv, interpreter) stays visible even when a volume is mounted over a parent of it.
        for path, fd in image:
            if not _same_dir(path, fd):
                builder.bind(f"/proc/self/fd/{fd}", path, False, True)
    finally:
        for fd, _ in sources:
            os.close(fd)
        for _, fd in image:
            os.close(fd)
        os.write(record, "".join(p + "\n" for p in builder.host_created).encode())
        os.close(record)
    _exec(spec)


def join_container(spec: dict) -> None:
    pid = spec["join_pid"]
    root = os.open(f"/proc/{pid}/root", os.O_PATH)  # the container may have chrooted into a new root
    for kind, flag in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS)):
        _setns(f"/proc/{pid}/ns/{kind}", flag)
    os.fchdir(root)
    os.chroot(".")
    _exec(spec)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        if "join_pid" in spec:
            join_container(spec)
        else:
            start_container(spec)
    except OSError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        os._exit(128)


if __name__ == "__main__":
    main()
