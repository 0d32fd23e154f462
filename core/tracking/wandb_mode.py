"""Where W&B credentials are configured and which mode W&B runs in, decided without logging in."""
from __future__ import annotations

import netrc
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

DEFAULT_WANDB_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 2.5  # `mode: auto` waits at most this long for the W&B server to answer


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL


def _netrc_path() -> Path:
    # The same lookup wandb itself does: $NETRC, else ~/.netrc (~/_netrc on Windows).
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    home = Path.home()
    for name in (".netrc", "_netrc"):
        if (home / name).exists():
            return home / name
    return home / ".netrc"


def wandb_credentials(base_url: str | None = None) -> str | None:
    """Where W&B credentials for `base_url` are configured ('WANDB_API_KEY', a netrc path) or None.

    Reads the environment and the netrc file only: it never prompts and never logs in.
    """
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlsplit(base_url or _wandb_base_url()).netloc
    path = _netrc_path()
    if not host or not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    return str(path) if entry and entry[2] else None


def server_answers(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP request to `base_url` gets any response within `timeout_s`.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller longer.
    """
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout_s).close()
            answered.set()
        except urllib.error.HTTPError:  # a 4xx/5xx is still the server answering
            answered.set()
        except Exception:
            pass

    thread = threading.Thread(target=probe, name="segsweep-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answered.is_set()


def resolve_wandb_mode(
    mode: str, probe: Callable[[str, float], bool] | None = None
) -> tuple[str, str]:
    """(mode, reason): the mode W&B runs in, decided without logging in.

    `auto` is online only with credentials AND a server that answers within PROBE_TIMEOUT_S;
    it honours WANDB_MODE=offline|disabled and probes nothing when no credentials are
    configured. `online` without credentials also becomes offline (wandb would prompt).
    """
    if mode == "online" and wandb_credentials() is None:
        # wandb would ask for an API key (or hang on a prompt): record offline instead.
        return "offline", "tracking.wandb.mode=online but no W&B credentials (WANDB_API_KEY or netrc)"
    if mode != "auto":
        return mode, f"tracking.wandb.mode={mode}"
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode in ("offline", "dryrun", "disabled"):
        return ("disabled" if env_mode == "disabled" else "offline"), f"WANDB_MODE={env_mode}"
    base_url = _wandb_base_url()
    source = wandb_credentials(base_url)
    if source is None:
        return "offline", "auto: no W&B credentials (WANDB_API_KEY or netrc)"
    started = time.perf_counter()
    if (probe or server_answers)(base_url, PROBE_TIMEOUT_S):
        return "online", f"auto: credentials in {source} and {base_url} answered"
    waited = time.perf_counter() - started
    return "offline", f"auto: {base_url} did not answer within {waited:.1f} s"
