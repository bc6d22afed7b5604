"""Auto-update: learn of a release the project's release key signed, install it between sessions,
and come back as the same node.

Where releases come from (`find_releases`), each verified here with `verify_release` against the
trusted release keys (the project's, plus SWARMLLM_RELEASE_KEYS), whatever the source already checked:
- the DHT, under RELEASE_KEY: every honest DHT node has refused to store what no trusted key signed
  (records.py), and this node re-stores the newest release it knows (the envelope as it is), so a
  release stays findable as long as nodes run, without anyone holding the key online;
- the release index (`--release-index URL`, default DEFAULT_RELEASE_INDEX), the fallback:
  URL/release.json, the same envelope as a file (releases.py `release_file`), beside the wheel.

What is installed (`choose_update`, pure): the newest verified release whose version is above the
running one and has not failed here before. An older or equal version is never installed (no
downgrade by replaying an old signed release). Nothing is installed while swarmllm runs from a
source checkout (an editable install) or from read-only packages (a hardened service, a container
image): the updater says so and only reports what is available.

How (`Updater.run`, a task beside `ServerNode.run`):
1. every `check_seconds` (+-10% so that a swarm's nodes do not all look at once), look up releases;
2. download the chosen wheel (http(s):// or file://, a relative URL resolved against the index) to
   the state folder, refusing more than its announced size; its sha256 must be the signed one, or
   the file is deleted and that version marked failed (a swapped wheel is never installed; failed
   versions are remembered in the updates folder, across restarts, and not tried again);
3. between sessions: after a random delay of up to a quarter of the check period (so the nodes of
   one span do not leave together), wait for a moment with no active session (at most
   IDLE_WAIT_SECONDS, then pause anyway and let the sessions finish), then pause (announce LEAVING,
   refuse new sessions) until no session is left;
4. `pip install --upgrade` the wheel into this interpreter's environment; on failure, resume
   serving and mark the version failed;
5. stop the node (it leaves the swarm cleanly) and ask the caller to `restart()`: the same command
   line is executed again in the same process (os.execv), so the node keeps its identity file,
   its flags and, under systemd or launchd, its service.
`UpdateState` is what the volunteer's page shows (status_http.py reads node.update_state).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Optional, Sequence

import swarmllm
from swarmllm.protocol.envelope import RecordRejected, SignedRecord
from swarmllm.protocol.releases import (
    RELEASE_FILE, RELEASE_KEY, ReleaseRecord, read_release_file, verify_release, version_key,
)
from swarmllm.state import state_dir

logger = logging.getLogger(__name__)

# Where the project publishes release.json beside its wheels (the fallback when the DHT has no release).
DEFAULT_RELEASE_INDEX = "https://github.com/swarmllm/swarmllm/releases/latest/download/"
DEFAULT_CHECK_SECONDS = 3600.0
IDLE_WAIT_SECONDS = 1800.0     # wait this long for a moment without sessions, then pause anyway (they finish)
DRAIN_WAIT_SECONDS = 1800.0    # and at most this long for the paused node's sessions to end (idle ones expire)
PIP_TIMEOUT_SECONDS = 900.0
FETCH_TIMEOUT_SECONDS = 60.0
FAILED_FILE = "failed.json"    # in the updates folder: the versions that failed here


@dataclasses.dataclass
class Found:
    """A verified release and the envelope it came in."""

    release: ReleaseRecord
    envelope: SignedRecord
    source: str   # "dht" or "index"


@dataclasses.dataclass
class UpdateState:
    """What the updater is doing, for the volunteer's page and the logs."""

    state: str = "starting"              # starting | up to date | available | downloading | waiting for sessions
    # to end | installing | restarting | failed | source checkout | read-only install
    current: str = swarmllm.__version__  # the running version
    available: Optional[str] = None      # the newest verified release above it, if any
    source: Optional[str] = None         # where that release was found: "dht" or "index"
    checked_at: Optional[float] = None   # unix time of the last look-up
    error: Optional[str] = None          # why the last attempt failed, in a sentence
    failed: list[str] = dataclasses.field(default_factory=list)  # versions that failed here (not retried)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def choose_update(current: str, found: Iterable[Found], failed: Iterable[str] = ()) -> Optional[Found]:
    """The release to install: the newest one above `current` that has not failed here; None if none."""
    failed = set(failed)
    candidates = [f for f in found if f.release.version not in failed
                  and version_key(f.release.version) > version_key(current)]
    return max(candidates, key=lambda f: (version_key(f.release.version), f.release.published_at), default=None)


def editable_install() -> bool:
    """Whether swarmllm runs from a source checkout (an editable install, or no installed package at all)."""
    from importlib import metadata

    try:
        direct = metadata.distribution("swarmllm").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return True
    return bool(direct) and bool(json.loads(direct).get("dir_info", {}).get("editable"))


def install_writable() -> bool:
    """Whether pip could write this interpreter's packages (a service's or container's may be read-only)."""
    import sysconfig

    return os.access(sysconfig.get_paths()["purelib"], os.W_OK)


def releases_from_dht(found: dict, trusted: frozenset[str], now: float) -> list[Found]:
    """Verified releases among the {subkey: value} a DHT lookup of RELEASE_KEY returned."""
    out = []
    for value in found.values():
        try:
            out.append(Found(verify_release(value, trusted, now=now), SignedRecord.model_validate(value), "dht"))
        except (RecordRejected, ValueError) as e:
            logger.debug("ignored a release value from the DHT: %s", e)
    return out


def _index_file_url(index: str) -> str:
    return index if index.endswith(".json") else index.rstrip("/") + "/" + RELEASE_FILE


def _open(url: str, timeout: float):
    if not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"{url!r}: only http://, https:// and file:// are fetched")
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (schemes checked above)


def release_from_index(index: str, trusted: frozenset[str], now: float) -> Found:
    """The verified release of a release index; RecordRejected / OSError saying why not."""
    with _open(_index_file_url(index), FETCH_TIMEOUT_SECONDS) as answer:
        value = read_release_file(answer.read(16385))
    return Found(verify_release(value, trusted, now=now), SignedRecord.model_validate(value), "index")


def wheel_location(release: ReleaseRecord, index: Optional[str]) -> str:
    """Where to fetch the wheel: its URL, resolved against the index when it is relative."""
    if "://" in release.wheel_url or index is None:
        return release.wheel_url
    return urllib.parse.urljoin(_index_file_url(index), release.wheel_url)


def fetch_wheel(release: ReleaseRecord, url: str, folder: Path) -> Path:
    """The wheel downloaded into `folder`, checked against the signed size and sha256; RecordRejected if not it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / release.wheel_name
    partial = path.with_suffix(".part")
    digest, size = hashlib.sha256(), 0
    with _open(url, FETCH_TIMEOUT_SECONDS) as answer, open(partial, "wb") as out:
        while chunk := answer.read(1 << 20):
            size += len(chunk)
            if size > release.wheel_size:
                break
            digest.update(chunk)
            out.write(chunk)
    if size != release.wheel_size or digest.hexdigest() != release.wheel_sha256:
        partial.unlink(missing_ok=True)
        raise RecordRejected(f"the wheel at {url} is not the signed one ({size} bytes, sha256 {digest.hexdigest()[:16]}…; "
                             f"the release says {release.wheel_size} bytes, {release.wheel_sha256[:16]}…): not installed")
    partial.replace(path)
    return path


def pip_install(wheel: Path) -> None:
    """Install `wheel` into this interpreter's environment; RuntimeError with pip's last lines if it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", "--no-input",
                           "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip could not install {wheel.name}: {' / '.join(tail)}")


def restart(argv: Optional[Sequence[str]] = None) -> None:
    """Become the same command again, from the newly installed package (never returns)."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "swarmllm", *args])


async def in_daemon_thread(fn, *args):
    """`fn(*args)` on a daemon thread: a fetch hanging on a dead network must not hold up the node's exit
    (the event loop's default executor is joined at exit; a daemon thread is not)."""
    import threading

    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # handed to the awaiting task
            loop.call_soon_threadsafe(lambda error=e: future.done() or future.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

    threading.Thread(target=run, name=f"updater-{getattr(fn, '__name__', 'task')}", daemon=True).start()
    return await future


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    check_seconds: float = DEFAULT_CHECK_SECONDS
    index: Optional[str] = DEFAULT_RELEASE_INDEX  # None: the DHT only
    folder: Optional[Path] = None                 # where wheels are downloaded (default: state folder/updates)


class Updater:
    """Keeps a ServerNode up to date (module docstring). After `run` returns, `restart_wanted`
    says whether the caller should `restart()` once the node has stopped."""

    def __init__(self, node, config: UpdateConfig = UpdateConfig(), trusted: Optional[frozenset[str]] = None):
        from swarmllm.swarm import trusted_release_signers

        self.node, self.config = node, config
        self.trusted = trusted_release_signers() if trusted is None else trusted
        self.folder = config.folder or state_dir() / "updates"
        self.state = UpdateState(failed=self._read_failed())
        self.restart_wanted = False
        node.update_state = self.state

    def _read_failed(self) -> list[str]:
        """Versions that failed here before, kept across restarts (a bad wheel is not fetched again)."""
        try:
            failed = json.loads((self.folder / FAILED_FILE).read_text())
            return [v for v in failed if isinstance(v, str)] if isinstance(failed, list) else []
        except (OSError, ValueError):
            return []

    async def run(self) -> None:
        while not self.node.stopped and self.node.status.state in ("starting",):
            await self.node.wait_stopped(0.5)
        while not self.node.stopped and not self.restart_wanted:
            try:
                await self.check_once()
            except Exception as e:  # an update must never take the node down
                logger.warning("update check failed: %s", e)
                self.state.state, self.state.error = "failed", str(e)
                self.node.resume("update")
            if self.restart_wanted:
                return
            await self.node.wait_stopped(self.config.check_seconds * random.uniform(0.9, 1.1))

    async def lookup(self) -> list[Found]:
        from swarmllm.swarm import dht_time

        now, found = dht_time(), []
        swarm = self.node.swarm
        if swarm is not None:
            try:
                values = (await swarm.get_records([RELEASE_KEY])).get(RELEASE_KEY, {})
                found = releases_from_dht(values, self.trusted, now)
            except Exception as e:
                logger.info("could not read releases from the DHT: %s", e)
        if self.config.index is not None:
            try:
                found.append(await in_daemon_thread(release_from_index, self.config.index, self.trusted, now))
            except (OSError, ValueError) as e:
                logger.info("the release index %s gave no release: %s", self.config.index, e)
        await self._republish(found)
        return found

    async def _republish(self, found: list[Found]) -> None:
        """Keep the newest release alive in the DHT: re-store its envelope when the DHT lacks it."""
        newest = max(found, key=lambda f: version_key(f.release.version), default=None)
        if newest is None or self.node.swarm is None:
            return
        in_dht = any(f.source == "dht" and f.envelope.signature == newest.envelope.signature for f in found)
        if not in_dht:
            try:
                stored = await self.node.swarm.store_signed(newest.envelope)
                logger.info("re-published release %s in the DHT (%s)", newest.release.version,
                            "stored" if stored else "no DHT node took it")
            except Exception as e:
                logger.info("could not re-publish release %s: %s", newest.release.version, e)

    async def check_once(self) -> None:
        state = self.state
        found = await self.lookup()
        state.checked_at = time.time()
        chosen = choose_update(state.current, found, state.failed)
        state.available, state.source = (chosen.release.version, chosen.source) if chosen else (None, None)
        if chosen is None:
            if not any(version_key(v) > version_key(state.current) for v in state.failed):
                state.state, state.error = "up to date", None  # else it stays "failed", saying why
            return
        if editable_install():
            state.state = "source checkout"
            state.error = "swarmllm runs from a source checkout: update it with git, not the updater"
            return
        if not install_writable():
            state.state = "read-only install"
            state.error = ("this environment's packages are read-only (a service or a container): update the package "
                           "or pull the new image; releases are still checked and shown")
            return
        release = chosen.release
        logger.warning("swarmllm %s is available (running %s): downloading it", release.version, state.current)
        state.state = "downloading"
        try:
            wheel = await in_daemon_thread(fetch_wheel, release, wheel_location(release, self.config.index),
                                           self.folder)
        except (RecordRejected, OSError, ValueError) as e:
            self._failed(release.version, str(e))
            return
        if not await self._drained(release.version):
            return
        state.state = "installing"
        try:
            await in_daemon_thread(pip_install, wheel)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            self._failed(release.version, str(e))
            self.node.resume("update")
            return
        logger.warning("installed swarmllm %s: restarting as the same node", release.version)
        state.state = "restarting"
        self.restart_wanted = True
        self.node.stop()

    async def _drained(self, version: str) -> bool:
        """Pause once the node is between sessions (module docstring, step 3); False if it stopped meanwhile."""
        node, state = self.node, self.state
        state.state = "waiting for sessions to end"
        await node.wait_stopped(random.uniform(0, self.config.check_seconds / 4))
        deadline = time.monotonic() + IDLE_WAIT_SECONDS
        while not node.stopped and node.active_sessions and time.monotonic() < deadline:
            await node.wait_stopped(1.0)
        node.pause(f"updating to swarmllm {version}", source="update")
        deadline = time.monotonic() + DRAIN_WAIT_SECONDS
        while not node.stopped and node.active_sessions and time.monotonic() < deadline:
            await node.wait_stopped(0.5)
        await node.wait_stopped(1.5)  # the serve loop announces LEAVING within a second
        return not node.stopped

    def _failed(self, version: str, error: str) -> None:
        logger.warning("update to %s failed: %s", version, error)
        self.state.state, self.state.error = "failed", error
        self.state.failed.append(version)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / FAILED_FILE).write_text(json.dumps(self.state.failed[-100:]))
        except OSError as e:
            logger.warning("could not remember the failed version: %s", e)


def config_from_flags(auto_update: bool, check_seconds: float, release_index: Optional[str]) -> Optional[UpdateConfig]:
    """The UpdateConfig of --auto-update / --update-check / --release-index; None when auto-update is off."""
    if not auto_update:
        return None
    if not check_seconds > 0:
        raise ValueError(f"--update-check must be a positive number of seconds, not {check_seconds}")
    index = DEFAULT_RELEASE_INDEX if release_index is None else None if release_index == "off" else release_index
    return UpdateConfig(check_seconds=check_seconds, index=index)


async def run_node(node, on_ready=None, update: Optional[UpdateConfig] = None) -> bool:
    """`node.run(on_ready)` with an Updater beside it when `update` is given; True when the node stopped
    to restart into a newly installed release (the caller then calls `restart()`)."""
    updater = Updater(node, update) if update is not None else None
    task = asyncio.ensure_future(updater.run()) if updater is not None else None
    try:
        await node.run(on_ready=on_ready)
    finally:
        if task is not None:
            task.cancel()
    return updater is not None and updater.restart_wanted
