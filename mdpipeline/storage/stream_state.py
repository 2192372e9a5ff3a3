"""DDL of the real-time path's state beyond offsets and gaps (schema version 9).

- `ops.stream_collectors`: one row per running or past collector: until when everything it received
  is confirmed on its raw topic (`covered_until`). A restart after a crash, a kill or a stop lands a
  gap marker from there, so the time no collector ran is recorded and repaired.
- `ops.stream_offsets` remembers which incarnation of the topic (`topic_id`) the offset belongs to and
  when the last processed frame was received and landed: a recreated or truncated topic is detected
  and the interval it lost becomes a gap.
- `ops.stream_gaps.origin`: `marker` (landed by a collector) or `log_reset` (found by the real-time job
  when the raw log no longer holds what was processed, or dropped frames before they were processed);
  gaps are unique per topic incarnation, so a recreated topic's offsets do not collide with old gaps.
"""

DDL = """
create table if not exists ops.stream_collectors (
    name          text        primary key,
    provider      text        not null,
    topic         text        not null,
    covered_until timestamptz,
    last_frame_at timestamptz,
    frames        bigint      not null default 0,
    pid           integer,
    host          text,
    started_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

alter table ops.stream_offsets add column if not exists topic_id text;
alter table ops.stream_offsets add column if not exists last_received_at timestamptz;
alter table ops.stream_offsets add column if not exists last_landed_at timestamptz;

alter table ops.stream_gaps add column if not exists topic_id text;
alter table ops.stream_gaps add column if not exists origin text not null default 'marker'
    check (origin in ('marker', 'log_reset'));
alter table ops.stream_gaps drop constraint if exists stream_gaps_topic_raw_offset_key;
create unique index if not exists stream_gaps_per_incarnation
    on ops.stream_gaps (topic, coalesce(topic_id, ''), raw_offset, origin);
"""
