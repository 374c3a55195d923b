"""Observe relations that outlive their process: kept while it runs, taken over at start.

``RelationKeeper`` hears every relation that begins or ends in the core
(``Observers.changed``) and writes them to the process's relation file
(``bridge/edge/relations.py``) once per reactor turn. When the CoAP port listens it
reads the file that the process before it left (a worker killed and restarted by the
supervisor, or the bridge restarted) and hands each relation back to the core
(``GatewayCore.restore_relation``): the device's endpoint, token, CON or NON and block
size as it registered, so that the device, which still holds its side, goes on getting
notifications without doing anything. Its device is connected on the gateway session
again, an observer of ``/attributes`` gets its whole current view (what changed while
no process served it is unknown), and its first notification goes CON (RFC 7641 §4.5
allows it at any time): a device that is gone is found by the CON timeout, one that
rebooted answers RST, and either ends the relation as it would have before.

A relation that cannot go on is ended the way RFC 7641 §3.2 and §4.2 give a server:
a notification with an error code and no Observe option, after which a client that
still wants notifications registers again:

* 4.01 when its device is no longer in the registry (what a new registration would get);
* 5.03 (Max-Age 1) when the file was written under another worker count or CoAP port
  (the device's datagrams now reach another worker), or for the relations of a worker
  that no longer exists (the single process or worker 1 ends those: ``others``), or when
  ``coap.max_observers`` leaves no room for it.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..coap.datagram import Observation
from ..core import codes
from ..core.observe import Relation
from ..edge import relations as files
from ..edge.relations import Kept, RelationFile
from ..logs import logger

log = logger("observe")

Key = Tuple[str, str]
RETRY_SECONDS = 5.0  # after a failed write, the next try
ENDED_MAX_AGE = 1  # s: the Max-Age of a 5.03 that ends a relation (register again at once)


def kept(relation: Relation) -> Optional[Kept]:
    """``relation`` as the file keeps it; None for one that cannot outlive its process
    (over DTLS or a connection: not a (host, port) peer with a datagram observation)."""
    remote, observation = relation.remote, relation.observation
    if type(remote) is not tuple or type(observation) is not Observation:
        return None
    return Kept(relation.device, relation.feature, str(remote[0]), int(remote[1]),
                relation.token, observation.confirmable, relation.block_size)


class RelationKeeper:
    """Keeps the core's relations in the process's file; takes over its predecessor's."""

    def __init__(self, core: Any, reactor: Any, lookup: Callable[[str], Any],
                 apply: Callable[[List[Any]], None], path: str, shape: str,
                 adopts: Optional[Tuple[str, int]] = None):
        """``lookup``: device name -> its ``Device`` in the registry (None: gone);
        ``adopts``: (DATA_DIR, worker count) for the process that ends the relations of
        workers that no longer exist (the single process, worker 1)."""
        self.core = core
        self.reactor = reactor
        self.lookup = lookup
        self.apply = apply
        self.path = path
        self.shape = shape
        self.adopts = adopts
        self.file: Optional[RelationFile] = None
        self.transport: Any = None
        self.changes: Dict[Key, Optional[Kept]] = {}  # None: ended
        self.restored = 0
        self.ended = 0
        self._call: Any = None
        self._failing = False
        self._restoring = False  # registering what the file holds: no change to write
        core.subscriptions.observers.changed = self.changed

    # -- while running -----------------------------------------------------------------

    def changed(self, key: Key, relation: Optional[Relation]) -> None:
        """A relation began (``relation``) or ended (None): written at the end of the turn."""
        if self.file is None or self._restoring:
            return
        self.changes[key] = kept(relation) if relation is not None else None
        if self._call is None:
            self._call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        if not self.changes or self.file is None:
            return
        changes, self.changes = self.changes, {}
        try:
            self.file.write([k for k in changes.values() if k is not None],
                            [key for key, k in changes.items() if k is None], self.shape)
        except (sqlite3.Error, OSError) as exc:
            changes.update(self.changes)  # later changes win
            self.changes = changes
            self._call = self.reactor.callLater(RETRY_SECONDS, self.flush)
            if not self._failing:
                self._failing = True
                log.error("Cannot write the observe relations to {path}: {error}; they are "
                          "written when it works again (until then a restart loses them)",
                          path=self.path, error=str(exc))
            return
        if self._failing:
            self._failing = False
            log.info("Observe relations written to {path} again", path=self.path)

    def stop(self) -> None:
        """Write what changed and close the file (the relations stay for the next start)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.file is not None:
            self.flush()
            self.file.close()
            self.file = None
        self.transport = None

    # -- at start ----------------------------------------------------------------------

    def start(self, transport: Any) -> None:
        """CoAP listens on ``transport``: take the relations over, end what cannot go on."""
        self.transport = transport
        try:
            self.file = RelationFile(self.path)
            previous = self.file.load()
            shape = self.file.shape()
        except (sqlite3.Error, OSError) as exc:
            log.error("Cannot use {path} ({error}): observe relations are not kept across "
                      "a restart", path=self.path, error=str(exc))
            self.file = None
            return
        if previous and shape != self.shape:
            self._end_all(previous, "the bridge restarted with another worker count or "
                          "CoAP port (%s, now %s)" % (shape, self.shape))
            self.file.clear(self.shape)
        elif previous:
            self._take_over(previous)
        if self.adopts is not None:
            self._end_others(*self.adopts)

    def _take_over(self, previous: List[Kept]) -> None:
        now = self.reactor.seconds()
        gone: List[Kept] = []
        full: List[Kept] = []
        actions: List[Any] = []
        for relation in previous:
            device = self.lookup(relation.device)
            if device is None:
                gone.append(relation)
                continue
            # -inf: its first notification goes CON (see the module docstring)
            observation = Observation(relation.confirmable, float("-inf"))
            self._restoring = True
            try:
                restored = self.core.restore_relation(
                    device, relation.feature, (relation.host, relation.port), relation.token,
                    observation, relation.block_size, now)
            finally:
                self._restoring = False
            if restored is None:
                full.append(relation)
            else:
                actions += restored
                self.restored += 1
        if self.restored:
            log.info("Took over {count} observe relations from {path}", count=self.restored,
                     path=self.path)
        self._end(gone, codes.UNAUTHORIZED, "the device is no longer registered")
        self._end(full, codes.SERVICE_UNAVAILABLE, "observer limit reached",
                  max_age=ENDED_MAX_AGE)
        self.apply(actions)

    def _end_all(self, previous: List[Kept], why: str, path: Optional[str] = None) -> None:
        log.info("Ending {count} observe relations from {path}: {why}", count=len(previous),
                 path=path or self.path, why=why)
        self._end(previous, codes.SERVICE_UNAVAILABLE, "the bridge restarted: register again",
                  max_age=ENDED_MAX_AGE)

    def _end_others(self, data_dir: str, workers: int) -> None:
        """The relations of processes that no longer exist (the worker count changed)."""
        for path in files.others(data_dir, workers):
            try:
                other = RelationFile(path)
                try:
                    previous = other.load()
                finally:
                    other.close()
            except (sqlite3.Error, OSError) as exc:
                log.error("Cannot read {path}: {error}", path=path, error=str(exc))
                continue
            if previous:
                self._end_all(previous, "its worker no longer exists", path)
            files.remove(path)

    def _end(self, relations: List[Kept], code: int, diagnostic: str,
             max_age: Optional[int] = None) -> None:
        """Tell each device that its relation ended (``code``, no Observe) and forget it."""
        if not relations:
            return
        for relation in relations:
            self.transport.end_observation((relation.host, relation.port), relation.token,
                                           code, diagnostic.encode(), max_age)
            log.debug("observe of /{feature} by {device} ended ({reason}): told with {code}",
                      feature=relation.feature, device=relation.device, reason=diagnostic,
                      code=codes.dotted(code))
            if self.file is not None:
                self.changes[(relation.device, relation.feature)] = None
        log.info("Ended {count} observe relations ({reason}): each device told with {code}",
                 count=len(relations), reason=diagnostic, code=codes.dotted(code))
        self.ended += len(relations)
        self.flush()


def relation_keeper(core: Any, reactor: Any, view: Any, apply: Callable[[List[Any]], None],
                    config: Any, worker: int) -> RelationKeeper:
    """The keeper of process ``worker`` (0: the single process): its file in DATA_DIR, the
    shape it runs under, the registry's copy (``view``: name -> device by its token)."""
    workers = config.coap.workers if worker else 1

    def lookup(name: str) -> Any:
        view.refresh()  # at start, before any request has had it read
        return view.get(view.token_of(name) or "")
    return RelationKeeper(
        core, reactor, lookup, apply,
        files.path_of(config.data_dir, worker),
        files.shape_of(workers, config.coap.bind_address, config.coap.bind_port),
        (config.data_dir, workers) if worker <= 1 else None)
