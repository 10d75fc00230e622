"""Control-plane workflows: scopes, streams, reader groups.

Every workflow that touches the data plane records its intent first (the row's state:
CREATING, SEALING, DELETING), then makes idempotent calls to the workers (create, seal and
delete of an existing/sealed/missing segment all succeed), then records the outcome. A
controller that dies at any step resumes the workflow from its recorded state
(`resume_unfinished`), so retries never leave a half-made stream behind.

Runs on the controller's single workflow thread: workflows never race each other.
"""

from __future__ import annotations

import logging

from streamvault.client import reader_group_state as rgs
from streamvault.client.connection import SegmentClient
from streamvault.client.protocol import messages as m
from streamvault.client.protocol.errors import (
    InvalidArgument,
    NoSuchReaderGroup,
    NoSuchScope,
    NoSuchStream,
    ScopeNotEmpty,
    StreamNotSealed,
)
from streamvault.client.protocol.limits import SEGMENTS_PER_STREAM_MAX
from streamvault.client.protocol.naming import (
    check_name,
    reader_group_stream,
    segment_id,
    segment_name,
)
from streamvault.client.synchronizer import StateSynchronizer
from streamvault.controlplane.metadata import (
    ACTIVE,
    CREATING,
    DELETING,
    SEALED,
    SEALING,
    MetadataStore,
    SegmentRow,
)

log = logging.getLogger(__name__)


class Workflows:
    def __init__(
        self, store: MetadataStore, segments: SegmentClient, *, call_deadline_s: float
    ) -> None:
        self.store = store
        self.segments = segments
        self.call_deadline_s = call_deadline_s

    def _call(self, segment: str, body: m.Control) -> object:
        return self.segments.call(segment, body, deadline_s=self.call_deadline_s)

    def _require_scope(self, scope: str) -> None:
        if not self.store.scope_exists(scope):
            raise NoSuchScope(f"scope {scope} does not exist", scope=scope)

    # scopes ----------------------------------------------------------------------------
    def create_scope(self, scope: str) -> bool:
        check_name("scope", scope)
        return self.store.create_scope(scope)

    def delete_scope(self, scope: str) -> bool:
        if not self.store.scope_exists(scope):
            return False
        streams = self.store.list_streams(scope, internal=True)
        if streams:
            raise ScopeNotEmpty(
                f"delete scope {scope}: it still has streams {streams[:5]}", scope=scope
            )
        return self.store.delete_scope(scope)

    # streams ---------------------------------------------------------------------------
    def create_stream(self, scope: str, stream: str, count: int, *, internal: bool = False) -> bool:
        check_name("stream", stream, internal_ok=internal)
        self._require_scope(scope)
        if not 1 <= count <= SEGMENTS_PER_STREAM_MAX:
            raise InvalidArgument(
                f"initial_segments={count} not in 1..{SEGMENTS_PER_STREAM_MAX}",
                field="initial_segments",
            )
        state = self.store.stream_state(scope, stream)
        if state == DELETING:
            self.delete_stream(scope, stream)
            state = None
        if state is None:
            rows = [
                SegmentRow(
                    segment_id(epoch=0, number=i),
                    i / count,
                    1.0 if i == count - 1 else (i + 1) / count,
                )
                for i in range(count)
            ]
            self.store.insert_stream(scope, stream, rows)
        elif state != CREATING:
            return False
        for row in self.store.segments(scope, stream):
            self._call(
                segment_name(scope, stream, row.segment_id),
                m.CreateSegment(segment=segment_name(scope, stream, row.segment_id)),
            )
        self.store.set_stream_state(scope, stream, ACTIVE)
        log.info("stream %s/%s created segments=%d", scope, stream, count)
        return True

    def _segment_names(self, scope: str, stream: str) -> list[str]:
        return [
            segment_name(scope, stream, r.segment_id) for r in self.store.segments(scope, stream)
        ]

    def seal_stream(self, scope: str, stream: str) -> bool:
        state = self.store.stream_state(scope, stream)
        if state is None or state in (CREATING, DELETING):
            raise NoSuchStream(f"stream {scope}/{stream} does not exist", stream=stream)
        if state == SEALED:
            return False
        self.store.set_stream_state(scope, stream, SEALING)
        for name in self._segment_names(scope, stream):
            self._call(name, m.SealSegment(segment=name))
        self.store.set_stream_state(scope, stream, SEALED)
        log.info("stream %s/%s sealed", scope, stream)
        return True

    def truncate_stream(self, scope: str, stream: str, cut: dict[str, int]) -> bool:
        """Truncate the stream's segments at the stream cut's offsets."""
        state = self.store.stream_state(scope, stream)
        if state is None or state in (CREATING, DELETING):
            raise NoSuchStream(f"stream {scope}/{stream} does not exist", stream=stream)
        names = set(self._segment_names(scope, stream))
        unknown = sorted(set(cut) - names)
        if unknown or any(not isinstance(o, int) or o < 0 for o in cut.values()):
            raise InvalidArgument(
                f"truncate {scope}/{stream}: the cut names segments "
                f"{unknown} of another stream, or negative offsets",
                field="stream_cut",
            )
        for name, offset in sorted(cut.items()):
            self._call(name, m.TruncateSegment(segment=name, offset=offset))
        log.info("stream %s/%s truncated at %s", scope, stream, cut)
        return True

    def delete_stream(self, scope: str, stream: str) -> bool:
        state = self.store.stream_state(scope, stream)
        if state is None:
            return False
        if state in (ACTIVE, CREATING, SEALING):
            raise StreamNotSealed(
                f"delete stream {scope}/{stream}: seal it first (state {state})", stream=stream
            )
        self.store.set_stream_state(scope, stream, DELETING)
        for name in self._segment_names(scope, stream):
            self._call(name, m.DeleteSegment(segment=name))
        self.store.remove_stream(scope, stream)
        log.info("stream %s/%s deleted", scope, stream)
        return True

    # reader groups -----------------------------------------------------------------------
    def create_reader_group(
        self, scope: str, group: str, streams: list[str], from_tail: bool
    ) -> bool:
        check_name("reader group", group)
        self._require_scope(scope)
        row = self.store.reader_group(scope, group)
        if row is not None and row.state == ACTIVE:
            return False
        if row is None:
            for stream in streams:
                check_name("stream", stream)
                if self.store.stream_state(scope, stream) not in (ACTIVE, SEALED):
                    raise NoSuchStream(
                        f"reader group {group}: stream {scope}/{stream} does not exist",
                        stream=stream,
                    )
            self.store.insert_reader_group(scope, group, streams, from_tail)
        else:
            streams, from_tail = row.streams, row.from_tail
        internal = reader_group_stream(group)
        self.create_stream(scope, internal, 1, internal=True)
        slots = []
        for stream in streams:
            for name in self._segment_names(scope, stream):
                offset = 0
                if from_tail:
                    info = self._call(name, m.GetSegmentInfo(segment=name))
                    offset = info.length  # type: ignore[attr-defined]
                slots.append(rgs.SegmentSlot(name, offset))
        sync = StateSynchronizer(
            self.segments,
            self.state_segment(scope, group),
            encode=rgs.encode_state,
            decode=rgs.decode_state,
        )
        sync.initialize(rgs.GroupState(streams=list(streams), segments=slots))
        self.store.set_reader_group_state(scope, group, ACTIVE)
        log.info("reader group %s/%s created streams=%s", scope, group, streams)
        return True

    @staticmethod
    def state_segment(scope: str, group: str) -> str:
        return segment_name(scope, reader_group_stream(group), segment_id(epoch=0, number=0))

    def delete_reader_group(self, scope: str, group: str) -> bool:
        row = self.store.reader_group(scope, group)
        if row is None:
            raise NoSuchReaderGroup(f"reader group {scope}/{group} does not exist", group=group)
        self.store.set_reader_group_state(scope, group, DELETING)
        internal = reader_group_stream(group)
        if self.store.stream_state(scope, internal) is not None:
            if self.store.stream_state(scope, internal) != SEALED:
                self.seal_stream(scope, internal)
            self.delete_stream(scope, internal)
        self.store.remove_reader_group(scope, group)
        return True

    # recovery ----------------------------------------------------------------------------
    def resume_unfinished(self) -> int:
        """Finish workflows a previous controller left half done; return how many."""
        count = 0
        for scope, stream, state in self.store.unfinished_streams():
            log.info("resuming %s of stream %s/%s", state, scope, stream)
            if state == CREATING:
                self.create_stream(
                    scope,
                    stream,
                    len(self.store.segments(scope, stream)),
                    internal=stream.startswith("_"),
                )
            elif state == SEALING:
                self.seal_stream(scope, stream)
            else:
                self.delete_stream(scope, stream)
            count += 1
        for row in self.store.unfinished_reader_groups():
            if row.state == CREATING:
                self.create_reader_group(row.scope, row.group, row.streams, row.from_tail)
            else:
                self.delete_reader_group(row.scope, row.group)
            count += 1
        return count
