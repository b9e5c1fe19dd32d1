"""Public mode: the dashboard as a predictor anyone may use, without handing them the server.

The owner's dashboard lets its user type any folder (the server then scans and shows it) and
press buttons that scan, tag, train or build the demo. One switch, off by default, turns it into
a read-only predictor of one published run: ``CITYCLF_PUBLIC_RUN=<run id>`` (``cityclf app
--public RUN`` and ``make serve`` set it). Then the app shows only ``PAGES``, with the run fixed,
no dataset, folder or run choice and no button that writes or computes more than the uploaded
photo's answer and explanation; every photo counts against a per-session and a per-address rate
limit; and messages go through ``safe_message``, so no path of the server shows.

Nothing here imports Streamlit: the rate limit is plain Python, testable alone and usable by
any front end.
"""
from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict, deque

PUBLIC_RUN = "CITYCLF_PUBLIC_RUN"
# The pages a visitor may open, by file name; Predict first (it is the public app's home).
PAGES = ("5_predict.py", "2_leaderboard.py", "3_errors.py")
UNAVAILABLE = "This model is not available right now. Please try again later."


def public_run() -> str | None:
    """The run id the public dashboard serves, or None: the owner's dashboard (the default)."""
    return os.environ.get(PUBLIC_RUN, "").strip() or None


def is_public() -> bool:
    return public_run() is not None


# ------------------------------------------------------------------------------ rate limits

class RateLimit:
    """At most `limit` events per `window_s` seconds per key (a sliding window).

    The table is process-wide and bounded: at most `max_keys` keys, the least recently seen
    forgotten first, so a flood of new sessions or addresses cannot grow the server's memory
    (a forgotten key starts afresh, which a per-address limit over many addresses allows anyway).
    """

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000):
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self._events: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()  # Streamlit runs sessions in threads

    def _recent(self, key: str, now: float) -> deque:
        events = self._events.setdefault(key, deque())
        self._events.move_to_end(key)
        while events and events[0] <= now - self.window_s:
            events.popleft()
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        return events

    def wait_s(self, key: str, now: float | None = None) -> float:
        """Seconds until `key` may have another event (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._recent(key, now)
            return 0.0 if len(events) < self.limit else events[0] + self.window_s - now

    def record(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(key, now).append(now)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()


# A photo answered and explained is a few seconds of both cores: a visitor trying the model gets
# a dozen a minute; one address (a household, an office) a few visitors' worth.
PER_SESSION = RateLimit(limit=12, window_s=60)
PER_ADDRESS = RateLimit(limit=40, window_s=60)


def admit(session: str, address: str, now: float | None = None) -> str | None:
    """Count one photo for this session and address, or say (kindly) why not and for how long.

    Returns None when the photo may be answered (then it is counted against both limits);
    otherwise a one-line message for the visitor, and nothing is counted.
    """
    now = time.monotonic() if now is None else now
    session_wait = PER_SESSION.wait_s(session, now)
    address_wait = PER_ADDRESS.wait_s(address, now)
    if session_wait or address_wait:
        seconds = max(1, round(max(session_wait, address_wait)))
        whose = "this browser tab" if session_wait >= address_wait else "your network"
        return (f"That is as many photos as {whose} may send for now: please try again in "
                f"{seconds} s.")
    PER_SESSION.record(session, now)
    PER_ADDRESS.record(address, now)
    return None


def client_address(peer: str | None, forwarded_for: str | None) -> str:
    """The visitor's address, for the per-address limit.

    `peer` is the connection's address (Streamlit gives None for localhost). Behind a reverse
    proxy or load balancer every peer is the proxy, on this host or a private network; the proxy
    appends the visitor's address to X-Forwarded-For, so its last entry is taken then. A peer on
    a public address is a visitor itself, and its X-Forwarded-For (anyone can send one) is ignored.
    """
    try:
        proxied = peer is None or not ipaddress.ip_address(peer).is_global
    except ValueError:
        proxied = False
    if proxied and forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last
    return peer or "local"


# ------------------------------------------------------------------------------ messages

# An absolute POSIX or Windows path (or one under ~), up to a space, quote or bracket.
_PATH = re.compile(r"""(?<![\w.])(?:~|[A-Za-z]:)?[/\\](?:[^\s'"`()\[\],;:]+[/\\])*"""
                   r"""([^\s'"`()\[\],;:/\\]*)""")


def safe_message(text: str) -> str:
    """`text` with every server path cut down to its last part ("…/model.keras"), on one line:
    what a public page may show of an error without telling the world how the server is laid
    out."""
    def last_part(match: re.Match) -> str:
        return f"…/{match.group(1)}" if match.group(1) else "…"
    return " ".join(_PATH.sub(last_part, str(text)).split())
