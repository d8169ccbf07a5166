-- The three tables an e2e delivery writes, with the columns and indexes of
-- crates/store/src/postgres/schema.rs (every migration applied); see run.sh.
DROP TABLE IF EXISTS messages, deliveries, attempts;
CREATE TABLE messages (
    id TEXT PRIMARY KEY, app_id TEXT NOT NULL, event_id TEXT, event_type TEXT NOT NULL,
    payload BYTEA NOT NULL, channels TEXT, tags TEXT, callback_url TEXT, deliver_at BIGINT,
    source_id TEXT, headers TEXT, retain_until BIGINT, created_at BIGINT NOT NULL, ordering_key TEXT);
CREATE INDEX messages_by_app ON messages (app_id, id);
CREATE INDEX messages_by_source ON messages (source_id, id) WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX messages_by_event_id ON messages (app_id, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX messages_retained ON messages (retain_until) WHERE retain_until IS NOT NULL;
CREATE TABLE deliveries (
    id TEXT NOT NULL, msg_id TEXT NOT NULL, app_id TEXT NOT NULL, endpoint_id TEXT,
    state BIGINT NOT NULL, attempts BIGINT NOT NULL, next_at BIGINT, first_attempt_at BIGINT,
    trigger BIGINT NOT NULL, updated_at BIGINT NOT NULL, claimed_by BIGINT,
    order_key TEXT, order_seq BIGINT, PRIMARY KEY (msg_id, id)) WITH (fillfactor = 80);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, msg_id);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state IN (1, 3);
CREATE INDEX deliveries_lane_open ON deliveries (endpoint_id, order_key) WHERE order_key IS NOT NULL AND state IN (1, 3);
CREATE INDEX deliveries_waiting ON deliveries (endpoint_id, order_key, order_seq) WHERE state = 6;
CREATE TABLE attempts (
    id TEXT NOT NULL, msg_id TEXT NOT NULL, app_id TEXT NOT NULL, delivery_id TEXT NOT NULL,
    endpoint_id TEXT, url TEXT NOT NULL, status_code BIGINT NOT NULL, response TEXT NOT NULL,
    duration_ms BIGINT NOT NULL, error_class TEXT, state BIGINT NOT NULL, trigger BIGINT NOT NULL,
    created_at BIGINT NOT NULL, PRIMARY KEY (msg_id, id));
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, id);
