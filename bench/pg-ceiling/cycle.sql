-- One e2e delivery's row writes, :n at a time: a publish (synced), then its attempt (not).
BEGIN;
WITH m AS (
  INSERT INTO messages (id, app_id, event_type, payload, created_at)
  SELECT 'msg_' || md5(random()::text), 'app_1', 'invoice.paid', convert_to(repeat('x', 180), 'UTF8'), 1
  FROM generate_series(1, :n) RETURNING id)
INSERT INTO deliveries (id, msg_id, app_id, endpoint_id, state, attempts, next_at, trigger, updated_at)
SELECT 'dlv_' || md5(random()::text), id, 'app_1', 'ep_' || (random() * 16)::int, 1, 0, 1, 0, 1 FROM m;
COMMIT;
BEGIN;
SET LOCAL synchronous_commit = off;
WITH d AS (
  UPDATE deliveries SET state = 2, attempts = 1, next_at = NULL, first_attempt_at = 2, updated_at = 2
  WHERE (msg_id, id) IN (SELECT msg_id, id FROM deliveries WHERE state IN (1, 3) ORDER BY next_at LIMIT :n FOR UPDATE SKIP LOCKED)
  RETURNING msg_id, id, app_id, endpoint_id)
INSERT INTO attempts (id, msg_id, app_id, delivery_id, endpoint_id, url, status_code, response, duration_ms, state, trigger, created_at)
SELECT 'atmpt_' || md5(random()::text), msg_id, app_id, id, endpoint_id, 'http://127.0.0.1:9/sink', 200, 'ok', 1, 2, 0, 2 FROM d;
COMMIT;
